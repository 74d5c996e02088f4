#!/bin/sh
# vae_fashion --mpi on 2 ranks (run by make test-mpi):
#  - it trains, and rank 0 alone prints the summary and writes the files;
#  - 2 ranks x 128 images train the weights of 1 process x 256;
#  - a rank that cannot load its data, or write its output, makes every
#    rank stop with a message instead of waiting forever (a hang would hit
#    the timeout);
#  - a build without MPI refuses --mpi as a bad command line.
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
diff=$(python3 - "$T/two/vae.safetensors" "$T/one/vae.safetensors" <<'EOF'
import array, json, struct, sys
def tensors(path):
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    return {k: array.array('f', raw[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]])
            for k, v in head.items() if k != '__metadata__'}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
print(max(abs(x - y) for k in a for x, y in zip(a[k], b[k])) if a.keys() == b.keys() else 'names differ')
EOF
)
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

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
