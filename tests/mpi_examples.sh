#!/bin/sh
# vae_fashion --mpi on 2 ranks (run by make test-mpi):
#  - it trains, and rank 0 alone prints the summary and writes the files;
#  - 2 ranks x 128 images train the weights of 1 process x 256;
#  - a rank that cannot load its data, or write its output, makes every
#    rank stop with a message instead of waiting forever (a hang would hit
#    the timeout);
#  - a build without MPI refuses --mpi as a bad command line;
#  - charlm: 2 ranks x 4 windows train the weights of 1 process x 8 (with
#    --dropout 0: with dropout every rank draws the masks of rows 0.., so
#    the two match only statistically), and a rank without its text makes
#    every rank stop with a message.
# Also prints (info) epoch 1 of 2 ranks x 128 images beside 1 process x 256.
#   tests/mpi_examples.sh BUILD DATA NOMPI_BINARY
# (as root, with OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
set -u
build=$1 data=$2 nompi=$3
mpirun="mpirun --oversubscribe"
T=$build/mpi_examples
rm -rf "$T" && mkdir -p "$T/nodata"
passed=0 failed=0
check() { if [ "$1" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $2"; fi; }
has() { grep -qF -- "$2" "$1"; }
# the largest difference between the weights of two safetensors files; with
# a third argument, leaving out the keys' biases of the attention (the middle
# third of each in_proj_bias): softmax ignores them, so their gradient is 0
# but for rounding, which Adam scales up to steps of the learning rate
weight_diff() {
    python3 - "$@" <<'EOF'
import array, json, struct, sys
def tensors(path):
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    return {k: array.array('f', raw[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]])
            for k, v in head.items() if k != '__metadata__'}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
if len(sys.argv) > 3:
    for k in a:
        if k.endswith('in_proj_bias'):
            third = len(a[k]) // 3
            a[k], b[k] = a[k][:third] + a[k][2 * third:], b[k][:third] + b[k][2 * third:]
print(max(abs(x - y) for k in a for x, y in zip(a[k], b[k])) if a.keys() == b.keys() else 'names differ')
EOF
}

# ---- two ranks train ----
OMP_NUM_THREADS=1 timeout 300 $mpirun -np 2 "$build/vae_fashion" --mpi --quick --data "$data" --out "$T/two" > "$T/two.log" 2>&1
check $? "2 ranks --quick failed: $(tail -n 5 "$T/two.log")"
[ "$(grep -c '^summary: {' "$T/two.log")" = 1 ] && has "$T/two.log" '"ranks": 2}'
check $? "2 ranks: not one summary line with \"ranks\": 2"
[ -s "$T/two/vae.safetensors" ] && [ -s "$T/two/samples.png" ]
check $? "2 ranks: no model file or pictures"
OMP_NUM_THREADS=1 "$build/vae_fashion" --quick --batch 256 --data "$data" --out "$T/one" > "$T/one.log" 2>&1
check $? "1 process --batch 256 failed"
# the same model: the weights differ by float sums in another order alone
# (measured 3.1e-7 after the 24 steps; 0.03 if each rank drew the noise of
# rows 0.. rather than its own rows')
diff=$(weight_diff "$T/two/vae.safetensors" "$T/one/vae.safetensors")
awk -v d="$diff" 'BEGIN { exit !(d + 0 == d && d < 1e-5) }'
check $? "2 ranks x 128 and 1 x 256 trained different weights: largest difference $diff"
echo "info: weights of 2 ranks x 128 and 1 x 256 differ by at most $diff"
echo "info: 2 ranks x 128: $(grep '^epoch  1' "$T/two.log")"
echo "info: 1 x 256:       $(grep '^epoch  1' "$T/one.log")"

# ---- a rank that cannot load its data: every rank stops ----
for bad in 0 1; do # rank 0 or rank 1 has no data (two programs: mpirun's A : B)
    if [ "$bad" = 0 ]; then data0=$T/nodata data1=$data; else data0=$data data1=$T/nodata; fi
    timeout 300 $mpirun -np 1 "$build/vae_fashion" --mpi --quick --data "$data0" --out "$T/bad" : \
                        -np 1 "$build/vae_fashion" --mpi --quick --data "$data1" --out "$T/bad" > "$T/bad$bad.log" 2>&1
    status=$?
    [ "$status" != 0 ] && [ "$status" != 124 ]
    check $? "rank $bad without data: exit status $status (124: a hang)"
    has "$T/bad$bad.log" "$T/nodata/train-images-idx3-ubyte: cannot open"
    check $? "rank $bad without data: no message of its own"
    [ "$bad" = 0 ] || has "$T/bad$bad.log" "error: rank 1 could not load its data; every rank stops"
    check $? "rank $bad without data: rank 0 does not name it"
    ! grep -q '^summary:' "$T/bad$bad.log"
    check $? "rank $bad without data: a summary line"
done

# ---- rank 0 cannot write its output: every rank stops ----
: > "$T/not_a_dir"
timeout 300 $mpirun -np 2 "$build/vae_fashion" --mpi --quick --data "$data" --out "$T/not_a_dir" > "$T/out.log" 2>&1
status=$?
[ "$status" != 0 ] && [ "$status" != 124 ] && has "$T/out.log" "error: cannot write files in $T/not_a_dir"
check $? "an unwritable --out: exit status $status, $(head -n 3 "$T/out.log")"

# ---- built without MPI ----
"$nompi" --mpi --quick > "$T/nompi.log" 2>&1
status=$?
[ "$status" = 2 ] && has "$T/nompi.log" "--mpi: built without MPI"
check $? "a build without MPI: --mpi gave status $status: $(cat "$T/nompi.log")"

# ---- charlm: two ranks train what one process trains on both batches ----
C="$build/charlm --mpi --quick --dropout 0 --gen-tokens 4 --length 8"
OMP_NUM_THREADS=1 timeout 300 $mpirun -np 2 $C --batch 4 --out "$T/lm_two" > "$T/lm_two.log" 2>&1
check $? "charlm on 2 ranks failed: $(tail -n 5 "$T/lm_two.log")"
[ "$(grep -c '^summary: {' "$T/lm_two.log")" = 1 ] && has "$T/lm_two.log" '"ranks": 2}'
check $? "charlm on 2 ranks: not one summary line with \"ranks\": 2"
OMP_NUM_THREADS=1 "$build/charlm" --quick --dropout 0 --gen-tokens 4 --length 8 --batch 8 --out "$T/lm_one" > "$T/lm_one.log" 2>&1
check $? "charlm, 1 process --batch 8 failed: $(tail -n 5 "$T/lm_one.log")"
# (measured 1.2e-7 after the 40 steps; the keys' biases, left out, 7e-5)
diff=$(weight_diff "$T/lm_two/charlm.safetensors" "$T/lm_one/charlm.safetensors" no-key-bias)
awk -v d="$diff" 'BEGIN { exit !(d + 0 == d && d < 1e-5) }'
check $? "charlm: 2 ranks x 4 and 1 x 8 trained different weights: largest difference $diff"
echo "info: charlm weights of 2 ranks x 4 windows and 1 x 8 differ by at most $diff"

# ---- charlm: a rank without its text: every rank stops ----
fortunes=/usr/share/games/fortunes
for bad in 0 1; do
    if [ "$bad" = 0 ]; then text0=$T/nodata/text text1=$fortunes; else text0=$fortunes text1=$T/nodata/text; fi
    timeout 300 $mpirun -np 1 $C --text "$text0" --out "$T/lm_bad" : -np 1 $C --text "$text1" --out "$T/lm_bad" \
        > "$T/lm_bad$bad.log" 2>&1
    status=$?
    [ "$status" != 0 ] && [ "$status" != 124 ]
    check $? "charlm, rank $bad without its text: exit status $status (124: a hang)"
    has "$T/lm_bad$bad.log" "error: cannot read $T/nodata/text"
    check $? "charlm, rank $bad without its text: no message of its own"
    [ "$bad" = 0 ] || has "$T/lm_bad$bad.log" "error: rank 1 could not load its text; every rank stops"
    check $? "charlm, rank $bad without its text: rank 0 does not name it"
    ! grep -q '^summary:' "$T/lm_bad$bad.log"
    check $? "charlm, rank $bad without its text: a summary line"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
