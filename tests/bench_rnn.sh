#!/bin/sh
# One LSTM training step (2 layers, input 256, hidden 256, batch 32, 64 steps;
# forward and backward, the input needing a gradient too) by build/bench_rnn
# and by nn.LSTM in PyTorch (tests/bench_rnn.py), alternating over ROUNDS
# rounds in this run (the machine is shared: the best round of each is
# kept), on 1 and then 2 threads. PyTorch runs with OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE unset, and OPENBLAS_NUM_THREADS set to the thread count:
# Debian's torch calls OpenBLAS's own thread pool, which
# torch.set_num_threads does not limit. Wall-clock time is what counts; the
# processor time per step (all threads summed) is shown beside it, since on
# a busy machine it leaves out the time a program waited for a core.
#   tests/bench_rnn.sh build/bench_rnn
set -eu
bin=$1
py=${PYTHON:-/usr/bin/python3}
rounds=${ROUNDS:-5}
steps=${STEPS:-20}
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" | tail -n 1; }
least() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 < b + 0) ? a : b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ours_step() { OMP_NUM_THREADS="$1" "$bin" "$1" "$steps"; }
torch_step() {
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$1" OMP_NUM_THREADS="$1" \
        "$py" tests/bench_rnn.py --threads "$1" --steps "$steps"
}
echo "LSTM training step, 2 layers, input 256, hidden 256, batch 32, 64 steps, best of $rounds rounds of $steps steps"
out=$(ours_step 1); echo "$out" | head -n 1
out=$(torch_step 1); echo "$out" | head -n 1
printf '%-8s %11s %11s %8s   %13s %13s %8s\n' threads "attnvae ms" "pytorch ms" speedup "attnvae cpu" "pytorch cpu" ratio
for t in 1 2; do
    ours=1e30; theirs=1e30; ours_cpu=1e30; theirs_cpu=1e30
    for round in $(seq "$rounds"); do
        out=$(ours_step "$t")
        ours=$(least "$ours" "$(echo "$out" | field ms_per_step)")
        ours_cpu=$(least "$ours_cpu" "$(echo "$out" | field cpu_ms_per_step)")
        out=$(torch_step "$t")
        theirs=$(least "$theirs" "$(echo "$out" | field ms_per_step)")
        theirs_cpu=$(least "$theirs_cpu" "$(echo "$out" | field cpu_ms_per_step)")
    done
    printf '%-8s %11s %11s %8s   %13s %13s %8s\n' "$t" "$ours" "$theirs" "$(ratio "$theirs" "$ours")" \
        "$ours_cpu" "$theirs_cpu" "$(ratio "$theirs_cpu" "$ours_cpu")"
done
