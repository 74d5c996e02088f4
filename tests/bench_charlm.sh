#!/bin/sh
# examples/charlm against tests/charlm_torch.py (the same model, windows and
# schedule in PyTorch), both on one thread: STEPS training steps (default
# 300) of the default Transformer (d 128, 4 layers, batch 16, context 256;
# ARCHS="transformer lstm" adds the LSTM), then the bits per byte of the whole
# validation text. Training tokens per second by the wall clock, and per
# second of processor time (on a busy machine it leaves out the waits for a
# core). PyTorch runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset and
# OpenBLAS on one thread.
#   tests/bench_charlm.sh build/charlm
set -eu
bin=$1
py=${PYTHON:-/usr/bin/python3}
steps=${STEPS:-300}
archs=${ARCHS:-transformer}
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }
echo "charlm training on the fortunes, $steps steps, 1 thread: tokens/s (wall, cpu) and validation bits per byte"
printf '%-12s %10s %10s %7s %10s %10s %7s %9s %9s %7s\n' arch attnvae pytorch ratio "cpu ours" "cpu torch" ratio \
    "bpc ours" "bpc torch" diff
for arch in $archs; do
    ours=$(OMP_NUM_THREADS=1 "$bin" --arch "$arch" --steps "$steps" --eval-every 1000000 --out build/bench_charlm \
        --gen-tokens 8 --length 8 2>/dev/null | grep '^summary:')
    theirs=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        "$py" tests/charlm_torch.py --arch "$arch" --steps "$steps" --threads 1 | grep '^summary:')
    a=$(echo "$ours" | field train_tokens_per_s); b=$(echo "$theirs" | field train_tokens_per_s)
    ac=$(echo "$ours" | field train_tokens_per_cpu_s); bc=$(echo "$theirs" | field train_tokens_per_cpu_s)
    av=$(echo "$ours" | field val_bpc); bv=$(echo "$theirs" | field val_bpc)
    printf '%-12s %10s %10s %7s %10s %10s %7s %9s %9s %7s\n' "$arch" "$a" "$b" "$(ratio "$a" "$b")" "$ac" "$bc" \
        "$(ratio "$ac" "$bc")" "$av" "$bv" "$(diff "$av" "$bv")"
done
