#!/bin/sh
# The Fashion-MNIST VAE (784-400-20-400-784, batch 128, Adam) trained for one
# epoch by build/vae_fashion and by PyTorch, one after the other in this run,
# on 1 and then 2 threads; prints training images per second and the ratio.
#   tests/bench_vae.sh build/vae_fashion data/fashion
set -eu
bin=$1
data=$2
py=${PYTHON:-/usr/bin/python3}
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" | tail -n 1; }
echo "VAE training throughput, one epoch of 60000 images (img/s, higher is better)"
printf '%-8s %12s %12s %8s\n' threads attnvae pytorch ratio
for t in 1 2; do
    ours=$(OMP_NUM_THREADS=$t "$bin" --data "$data" --epochs 1 --iwae-k 0 --out build/bench_vae 2>/dev/null | field img_per_s)
    theirs=$("$py" tests/bench_vae.py "$data" --epochs 1 --threads "$t" 2>/dev/null | field img_per_s)
    printf '%-8s %12s %12s %8s\n' "$t" "$ours" "$theirs" "$(awk "BEGIN {printf \"%.2f\", $ours / $theirs}")"
done
