#!/bin/sh
# examples/charlm against PyTorch and against itself, on the fortunes:
# - both architectures: a model trained and saved by tests/charlm_torch.py
#   loads by name into charlm, whose validation bits per byte equal PyTorch's;
# - a run resumed from its checkpoint ends with the same model file, bit for
#   bit, as the run that was not interrupted (dropout on);
# - --load of the saved model gives the validation figure of the run that saved it.
# (charlm itself fails when cached and recomputed generation logits differ.)
# Usage: tests/charlm_check.sh [BUILD]   (from the repository root)
B=${1:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
# the value of a key in the summary line of a log
key() { sed -n 's/^summary: .*"'"$2"'": \([^,}]*\).*/\1/p' "$1"; }
# run LOG COMMAND...: COMMAND must exit 0, its output kept in LOG
run() {
    log=$1
    shift
    if "$@" > "$log" 2>&1; then ok; else bad "'$*' exited with $?"; sed 's/^/   | /' "$log" | tail -6; fi
}
# close WHAT A B: the two numbers differ by 2e-4 at most
close() {
    if "$PYTHON" -c 'import sys; sys.exit(not abs(float(sys.argv[1]) - float(sys.argv[2])) <= 2e-4)' "$2" "$3" 2>/dev/null
    then ok; else bad "$1: $2 and $3 differ"; fi
}

for arch in transformer lstm; do
    run "$T/torch_$arch" "$PYTHON" tests/charlm_torch.py --arch $arch --steps 8 --d-model 32 --layers 2 --heads 4 \
        --ff 64 --context 48 --batch 8 --eval-tokens 8192 --save "$T/torch_$arch.safetensors"
    run "$T/load_$arch" "$B/charlm" --quick --load "$T/torch_$arch.safetensors" --out "$T/o_$arch"
    grep -q "^loaded" "$T/load_$arch" && ok || bad "charlm --load of PyTorch's $arch model did not say so"
    close "val_bpc of PyTorch's $arch model in PyTorch and in charlm" "$(key "$T/torch_$arch" val_bpc)" \
        "$(key "$T/load_$arch" val_bpc)"
done

Q="$B/charlm --quick --steps 6 --warmup 100 --dropout 0.1 --gen-tokens 4 --length 8"
run "$T/whole.log" $Q --out "$T/whole"
run "$T/part.log" $Q --out "$T/part" --steps 3
run "$T/resumed.log" $Q --out "$T/part" --resume "$T/part/checkpoint.safetensors"
grep -q "^resumed .* at step 3" "$T/resumed.log" && ok || bad "the resumed run did not start at step 3"
cmp -s "$T/whole/charlm.safetensors" "$T/part/charlm.safetensors" && ok ||
    bad "6 steps in one run and 3 + 3 resumed from the checkpoint give different models"
run "$T/load.log" "$B/charlm" --quick --load "$T/whole/charlm.safetensors" --out "$T/whole"
[ -n "$(key "$T/whole.log" val_bpc)" ] && [ "$(key "$T/whole.log" val_bpc)" = "$(key "$T/load.log" val_bpc)" ] && ok ||
    bad "val_bpc after training $(key "$T/whole.log" val_bpc), after --load $(key "$T/load.log" val_bpc)"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
