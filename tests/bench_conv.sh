#!/bin/sh
# A 3x3 convolution (padding 1, bias) forward + backward of attnvae's
# av_conv2d and PyTorch 1.13's nn.Conv2d (oneDNN) side by side in this run,
# on 1 and 2 threads, for the shapes of a Fashion-MNIST ResNet (batch 128):
# milliseconds and GFLOP/s (3 products of 2 B Cout Cin 9 Ho Wo). The machine
# may be shared: the two alternate, twice each, every figure the best round
# of its process. PyTorch runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
# unset in its command alone.
#   tests/bench_conv.sh build/bench_conv ["B Cin Cout H stride" ...]
set -eu
bin=$1
shift
py=${PYTHON:-/usr/bin/python3}
if [ $# -eq 0 ]; then
    set -- "128 64 64 28 1" "128 64 64 14 1" "128 64 64 28 2" "128 128 128 14 1" "128 256 256 7 1" "128 128 256 14 2"
fi
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
best() { printf '%s\n%s\n' "$1" "$2" | sort -g | head -n 1; }
echo "3x3 conv fwd+bwd, padding 1, bias; best of 2 interleaved runs each (ms, GFLOP/s); speedup = torch / attnvae"
printf '%-3s %-20s | %9s %7s | %9s %7s | %7s\n' thr "B Cin Cout H stride" attnvae GFLOP/s torch GFLOP/s speedup
for t in 1 2; do
    for cfg in "$@"; do
        # shellcheck disable=SC2086
        a1=$(OMP_NUM_THREADS=$t "$bin" $cfg "$t" | field ms)
        p1=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_conv.py $cfg "$t" | field ms)
        a2=$(OMP_NUM_THREADS=$t "$bin" $cfg "$t" | field ms)
        p2=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_conv.py $cfg "$t" | field ms)
        a=$(best "$a1" "$a2")
        p=$(best "$p1" "$p2")
        gf=$(echo "$cfg" | awk '{ ho = int(($4 - 1) / $5) + 1; print 6 * $1 * $2 * $3 * 9 * ho * ho / 1e6 }')
        printf '%-3s %-20s | %9s %7.1f | %9s %7.1f | %6.2fx\n' "$t" "$cfg" "$a" "$(awk -v f="$gf" -v m="$a" 'BEGIN { print f / m }')" \
            "$p" "$(awk -v f="$gf" -v m="$p" 'BEGIN { print f / m }')" "$(awk -v a="$a" -v p="$p" 'BEGIN { print p / a }')"
    done
done
