#!/bin/sh
# Causal attention forward + backward (B = 1, H = 8, D = 64) of av_sdpa (tiled),
# av_sdpa_weights (naive) and PyTorch 1.13's softmax(q k^T / sqrt(d) + mask) v,
# side by side in this run, on 1 and 2 threads: milliseconds, GFLOP/s of the
# unmasked half (and its share of the measured FMA peak) and peak memory.
# Each figure is the best of several rounds in a process of its own; the
# implementations alternate, since the machine may be shared.
# OpenBLAS (under PyTorch) runs at its best: OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are unset in its command alone.
#   tests/bench_attention.sh build/bench_attention [T ...]
set -eu
bin=$1
shift
lengths=${*:-256 512 1024 2048 4096}
py=${PYTHON:-/usr/bin/python3}
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
peak=$("$bin" peak | field fma_peak_gflops)
isa=$("$bin" peak | sed -n 's/.*"isa": "\([a-z0-9]*\)".*/\1/p')
echo "causal attention fwd+bwd, B=1 H=8 D=64; FMA peak of one core ($isa) $peak GFLOP/s"
echo "GFLOP/s count the unmasked half: 7 T^2 D per head; memory: peak resident MB added by the step"
printf '%-3s %5s | %9s %7s %6s %8s | %9s %8s | %9s %8s | %7s\n' thr T sdpa_ms GFLOP/s peak% mem_MB naive_ms mem_MB torch_ms mem_MB speedup
for t in 1 2; do
    for T in $lengths; do
        s=$(OMP_NUM_THREADS=$t "$bin" sdpa "$T" "$t")
        if [ "$T" -le 2048 ]; then w=$(OMP_NUM_THREADS=$t "$bin" weights "$T" "$t"); else w=""; fi
        if [ "$T" -le 2048 ] || [ "$t" -eq 2 ]; then
            p=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_attention.py "$T" "$t")
        else p=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_attention.py "$T" "$t"); fi
        s2=$(OMP_NUM_THREADS=$t "$bin" sdpa "$T" "$t") # a second round after the others, best kept
        sms=$(printf '%s\n%s\n' "$(echo "$s" | field ms)" "$(echo "$s2" | field ms)" | sort -g | head -n 1)
        sg=$(awk -v T="$T" -v ms="$sms" 'BEGIN { printf "%.1f", 7 * T * T * 64 * 8 / (ms * 1e-3) * 1e-9 }')
        printf '%-3s %5s | %9s %7s %5.0f%% %8s | %9s %8s | %9s %8s | %6.1fx\n' "$t" "$T" "$sms" "$sg" \
            "$(awk -v g="$sg" -v p="$peak" -v t="$t" 'BEGIN { print 100 * g / (p * t) }')" "$(echo "$s" | field peak_rss_mb)" \
            "$(echo "$w" | field ms)" "$(echo "$w" | field peak_rss_mb)" "$(echo "$p" | field ms)" "$(echo "$p" | field peak_rss_mb)" \
            "$(awk -v a="$(echo "$p" | field ms)" -v b="$sms" 'BEGIN { print a / b }')"
    done
done
