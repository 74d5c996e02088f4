#!/bin/sh
# The Fashion-MNIST VAE (784-400-20-400-784, batch 128, Adam) trained for one
# epoch by build/vae_fashion and by the same model in PyTorch, alternating
# over 3 rounds in this run (the machine is shared: the best round of each is
# kept), on 1 and then 2 threads; prints training images per second.
# PyTorch runs at its best: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which
# would force an older OpenBLAS kernel under its matrix products, are unset
# in its command alone. Its thread count also limits OpenBLAS's own pool
# (torch.set_num_threads does not), so a 1-thread row is one thread.
#   tests/bench_vae.sh build/vae_fashion data/fashion
set -eu
bin=$1
data=$2
py=${PYTHON:-/usr/bin/python3}
pytorch() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" tests/bench_vae.py "$data" "$@" 2>/dev/null; }
field() { sed -n "s/.*\"$1\": \"\{0,1\}\([^\",}]*\).*/\1/p" | tail -n 1; }
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
summary=$(pytorch --epochs 1 --batches 1)
echo "VAE training throughput, one epoch of 60000 images, best of 3 rounds alternating (img/s, higher is better)"
echo "PyTorch: OpenBLAS core $(echo "$summary" | field blas_core) (its threads set to the row's), ATen kernels $(echo "$summary" | field cpu_capability)"
printf '%-8s %12s %12s %8s\n' threads attnvae pytorch ratio
for t in 1 2; do
    ours=0; theirs=0
    for round in 1 2 3; do
        ours=$(best "$ours" "$(OMP_NUM_THREADS=$t "$bin" --data "$data" --epochs 1 --iwae-k 1 --out build/bench_vae 2>/dev/null | field img_per_s)")
        theirs=$(best "$theirs" "$(pytorch --epochs 1 --threads "$t" | field img_per_s)")
    done
    printf '%-8s %12s %12s %8s\n' "$t" "$ours" "$theirs" "$(awk "BEGIN {printf \"%.2f\", $ours / $theirs}")"
done
