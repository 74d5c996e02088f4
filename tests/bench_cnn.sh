#!/bin/sh
# AttentionNet training throughput (examples/cnn_attention_fashion.c's net,
# batch 128, SGD with momentum) of attnvae and of the same model in PyTorch
# 1.13 (oneDNN convolutions, tests/bench_cnn.py), side by side in this run,
# on 1 and 2 threads: images per second, higher is better. The machine may be
# shared: the two alternate, twice each, and each figure is the best round of
# its process. PyTorch runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset
# in its command alone.
#   tests/bench_cnn.sh build/bench_cnn [B]
set -eu
bin=$1
B=${2:-128}
py=${PYTHON:-/usr/bin/python3}
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
best() { printf '%s\n%s\n' "$1" "$2" | sort -g | tail -n 1; }
echo "AttentionNet training step, batch $B, 1x28x28 (img/s, best of 2 interleaved runs each); ratio = attnvae / torch"
printf '%-8s %12s %12s %8s %10s\n' threads attnvae pytorch ratio params
for t in 1 2; do
    a1=$(OMP_NUM_THREADS=$t "$bin" "$B" "$t")
    p1=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_cnn.py "$B" "$t")
    a2=$(OMP_NUM_THREADS=$t "$bin" "$B" "$t")
    p2=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_cnn.py "$B" "$t")
    a=$(best "$(echo "$a1" | field img_per_s)" "$(echo "$a2" | field img_per_s)")
    p=$(best "$(echo "$p1" | field img_per_s)" "$(echo "$p2" | field img_per_s)")
    printf '%-8s %12s %12s %8s %10s\n' "$t" "$a" "$p" "$(awk -v a="$a" -v p="$p" 'BEGIN { printf "%.2f", a / p }')" \
        "$(echo "$a1" | field params)/$(echo "$p1" | field params)"
done
