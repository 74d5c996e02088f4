#!/bin/sh
# Causal attention forward + backward (B = 1, H = 8, D = 64) of av_sdpa (tiled),
# av_sdpa_weights (naive) and PyTorch 1.13's softmax(q k^T / sqrt(d) + mask) v,
# side by side in this run, on 1 and 2 threads: milliseconds, CPU milliseconds
# (all threads), GFLOP/s of the unmasked half and its share of the measured FMA
# peak, and peak memory. Each figure is the best of several rounds in a process
# of its own; the implementations alternate, since the machine may be shared.
# On a busy machine the wall-clock times include waits for a core; on one
# thread the CPU times do not, so their ratio is the fair one there.
# PyTorch runs at its best: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset
# in its command alone, and OPENBLAS_NUM_THREADS is the thread count (Debian's
# torch calls OpenBLAS's own pool, which torch.set_num_threads does not limit).
#   tests/bench_attention.sh build/bench_attention [T ...]
set -eu
bin=$1
shift
lengths=${*:-256 512 1024 2048 4096}
py=${PYTHON:-/usr/bin/python3}
field() { sed -n "s/.*\"$1\": \([0-9.-]*\).*/\1/p"; }
least() { printf '%s\n%s\n' "$1" "$2" | sort -g | head -n 1; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
peak() { "$bin" peak | field fma_peak_gflops; }
torch() {
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$2" OMP_NUM_THREADS="$2" \
        "$py" tests/bench_attention.py "$1" "$2"
}
peak1=$(peak)
isa=$("$bin" peak | sed -n 's/.*"isa": "\([a-z0-9]*\)".*/\1/p')
echo "causal attention fwd+bwd, B=1 H=8 D=64; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "GFLOP/s count the unmasked half: 7 T^2 D per head, over the wall time (gf) and the CPU time (cgf, 1 thread);"
echo "%pk: share of the FMA peak (x threads); mem: peak resident MB added by the step; x: torch time / sdpa time"
printf '%-3s %5s | %8s %8s %6s %4s %6s %4s %6s | %8s %6s | %8s %8s %6s | %6s %6s\n' thr T sdpa_ms cpu_ms gf %pk cgf %pk mem \
    naive_ms mem torch_ms cpu_ms mem x_wall x_cpu
rows=""
for t in 1 2; do
    for T in $lengths; do
        s=$(OMP_NUM_THREADS=$t "$bin" sdpa "$T" "$t")
        # the naive path needs T^2 memory per head: up to T = 2048 (a dash beyond)
        if [ "$T" -le 2048 ]; then w=$(OMP_NUM_THREADS=$t "$bin" weights "$T" "$t"); else w='"ms": -, "peak_rss_mb": -'; fi
        p=$(torch "$T" "$t")
        s2=$(OMP_NUM_THREADS=$t "$bin" sdpa "$T" "$t") # a second round after the others, best kept
        sms=$(least "$(echo "$s" | field ms)" "$(echo "$s2" | field ms)")
        scpu=$(least "$(echo "$s" | field cpu_ms)" "$(echo "$s2" | field cpu_ms)")
        rows="$rows$t $T $sms $scpu $(echo "$s" | field peak_rss_mb) $(echo "$w" | field ms) $(echo "$w" | field peak_rss_mb)"
        rows="$rows $(echo "$p" | field ms) $(echo "$p" | field cpu_ms) $(echo "$p" | field peak_rss_mb)
"
    done
done
# The peak again at the end: the best of both is the one the load hid least.
peak2=$(peak)
pk=$(calc "%.1f" "($peak1 > $peak2 ? $peak1 : $peak2)")
printf '%s' "$rows" | while read -r t T sms scpu smem wms wmem pms pcpu pmem; do
    flops=$(calc "%.0f" "7 * $T * $T * 64 * 8")
    gf=$(calc "%.1f" "$flops / ($sms * 1e6)")
    if [ "$t" -eq 1 ]; then cgf=$(calc "%.1f" "$flops / ($scpu * 1e6)"); cpk=$(calc "%.0f%%" "100 * $cgf / $pk")
    else cgf=-; cpk=-; fi
    printf '%-3s %5s | %8s %8s %6s %4s %6s %4s %6s | %8s %6s | %8s %8s %6s | %5.1fx %5s\n' "$t" "$T" "$sms" "$scpu" "$gf" \
        "$(calc "%.0f%%" "100 * $gf / ($pk * $t)")" "$cgf" "$cpk" "$smem" "$wms" "$wmem" "$pms" "$pcpu" "$pmem" \
        "$(calc "%.2f" "$pms / $sms")" "$(if [ "$t" -eq 1 ]; then calc "%.1fx" "$pcpu / $scpu"; else echo -; fi)"
done
echo "FMA peak of one core ($isa, the best ~1-ms piece at the start and end): $pk GFLOP/s;" \
    "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
