#!/bin/sh
# Data-parallel scaling of the Fashion-MNIST VAE on this machine: one epoch
# (60000 images) with the same global batch of 256 on 1 process, on 1 MPI
# rank (--mpi: what MPI itself costs) and on 2 ranks of 128, one thread each
# (OMP_NUM_THREADS=1); training images per second (the summary's
# img_per_s), best of 3 alternating rounds (the machine is shared).
#   tests/bench_mpi.sh build/vae_fashion data/fashion
# (as root, with OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
set -eu
bin=$1
data=$2
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" | tail -n 1; }
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
run() { # ranks, then the example's flags
    n=$1
    shift
    if [ "$n" = 0 ]; then OMP_NUM_THREADS=1 "$bin" "$@"
    else mpirun --oversubscribe -np "$n" -x OMP_NUM_THREADS=1 "$bin" --mpi "$@"
    fi 2>/dev/null | field img_per_s
}
flags="--data $data --epochs 1 --iwae-k 1 --out build/bench_mpi"
one=0 rank1=0 rank2=0
for round in 1 2 3; do
    one=$(best "$one" "$(run 0 $flags --batch 256)")
    rank1=$(best "$rank1" "$(run 1 $flags --batch 256)")
    rank2=$(best "$rank2" "$(run 2 $flags --batch 128)")
done
echo "VAE training over MPI on $(nproc) cores, one thread per rank, global batch 256, best of 3 (img/s)"
printf '%-24s %10s %8s\n' run img/s speedup
printf '%-24s %10s %8s\n' "1 process" "$one" 1.00
printf '%-24s %10s %8s\n' "1 rank (--mpi)" "$rank1" "$(awk "BEGIN {printf \"%.2f\", $rank1 / $one}")"
printf '%-24s %10s %8s\n' "2 ranks x 128 (--mpi)" "$rank2" "$(awk "BEGIN {printf \"%.2f\", $rank2 / $one}")"
