#!/bin/sh
# Runs the built examples on bad command lines and odd data sets (made here
# with python3) and checks each run's exit status and message: 0 and a
# summary line for a run that must work, 1 for bad data or unwritable output,
# 2 for a bad command line, and never a summary line after a failure.
# Usage: tests/examples_bad_input.sh [BUILD]   (from the repository root)
# Prints a FAIL line per failed check and ends with "N passed, M failed".
B=${1:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; sed 's/^/   | /' "$T/log" | tail -6; }

# expect STATUS PATTERN COMMAND...: COMMAND must exit with STATUS and print
# (stdout or stderr) a line matching the extended regex PATTERN; a failed
# run must not print a summary line, a finished one must.
expect() {
    want=$1 pattern=$2
    shift 2
    timeout "${TIMEOUT:-300}" "$@" > "$T/log" 2>&1
    got=$?
    if [ "$got" -ne "$want" ]; then bad "'$*' exited with $got, want $want"
    elif ! grep -qE -- "$pattern" "$T/log"; then bad "'$*': no line matches '$pattern'"
    elif [ "$want" -ne 0 ] && grep -q '^summary:' "$T/log"; then bad "'$*' failed but printed a summary line"
    elif [ "$want" -eq 0 ] && ! grep -q '^summary: {' "$T/log" && ! grep -q '^usage:' "$T/log"; then bad "'$*': no summary line"
    else ok
    fi
}
# check DESCRIPTION COMMAND...: COMMAND must succeed
check() {
    what=$1
    shift
    if "$@" > "$T/log" 2>&1; then ok; else bad "$what"; fi
}

# ---- data sets: name train-count test-count rows cols [train-label-fix] ----
"$PYTHON" - "$T" <<'PY' || { echo "FAIL: cannot make the test data"; echo "0 passed, 1 failed"; exit 1; }
import os, random, struct, sys
root = sys.argv[1]
rnd = random.Random(5)
def idx(path, dims, values):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]) + struct.pack(">%dI" % len(dims), *dims) + bytes(values))
def split(d, prefix, n, rows, cols, labels=None):
    idx("%s/%s-images-idx3-ubyte" % (d, prefix), [n, rows, cols], [rnd.randrange(256) for _ in range(n * rows * cols)])
    labels = labels if labels is not None else [i % 10 for i in range(n)]
    idx("%s/%s-labels-idx1-ubyte" % (d, prefix), [len(labels)], labels)
def dataset(name, n_train, n_test, rows=28, cols=28, train_labels=None, test_rows=None):
    d = os.path.join(root, name)
    os.makedirs(d)
    split(d, "train", n_train, rows, cols, train_labels)
    split(d, "t10k", n_test, test_rows or rows, test_rows or cols)
dataset("small", 300, 5)                     # fewer than --quick takes, fewer than 32 test images
dataset("one", 40, 1)                        # a single test image
dataset("small14", 200, 40, 14, 14)          # 14x14 images
dataset("label12", 100, 10, train_labels=[i % 10 for i in range(99)] + [12])
dataset("count", 100, 10, train_labels=[i % 10 for i in range(99)])
dataset("sizes", 100, 10, test_rows=14)
PY
S=$T/small

# PNG width and height, from the IHDR chunk
png_size() { "$PYTHON" -c 'import struct,sys; d=open(sys.argv[1],"rb").read(24); print("%dx%d" % struct.unpack(">II", d[16:24]))' "$1"; }

# ---- --help: usage with every flag, status 0, nothing trained or written ----
for ex in vae_fashion mlp_fashion ae_fashion cnn_attention_fashion; do
    expect 0 '^usage:' "$B/$ex" --data "$S" --out "$T/help_$ex" --help
    [ -e "$T/help_$ex" ] && bad "$ex --help created its output" || ok
    grep -q '^epoch' "$T/log" && bad "$ex --help trained" || ok
done
"$B/vae_fashion" --data "$S" --out "$T/h" --help > "$T/help.txt" 2>&1
for flag in data out load epochs latent hidden batch lr beta kl-warmup iwae-k iwae-k-train seed quick; do
    grep -qE -- "^  --$flag( |$)" "$T/help.txt" && ok || bad "vae_fashion --help does not list --$flag"
done
"$B/ae_fashion" --data "$S" --out "$T/h" --help > "$T/help.txt" 2>&1
for flag in data out load epochs code hidden batch lr seed quick; do
    grep -qE -- "^  --$flag( |$)" "$T/help.txt" && ok || bad "ae_fashion --help does not list --$flag"
done
"$B/cnn_attention_fashion" --data "$S" --help > "$T/help.txt" 2>&1
for flag in data out maps load epochs batch lr weight-decay warmup pad seed no-attention quick; do
    grep -qE -- "^  --$flag( |$)" "$T/help.txt" && ok || bad "cnn_attention_fashion --help does not list --$flag"
done

# ---- bad command lines: status 2, the message names the flag ----
V="$B/vae_fashion --data $S --out $T/v"
expect 2 "unknown flag '--frobnicate'" $V --frobnicate
expect 2 "unknown argument 'extra'" $V extra
expect 2 "--seed needs a value" $V --seed
expect 2 "--seed needs a value" $V --seed --quick
expect 2 "--seed: 'abc' is not an integer" $V --seed abc
expect 2 "--epochs: '2.5' is not an integer" $V --epochs 2.5
expect 2 "--lr: '1e-3x' is not a number" $V --lr 1e-3x
expect 2 "--lr: '' is not a number" $V --lr ""
expect 2 "--batch: 0 is out of range" $V --batch 0
expect 2 "--latent: -3 is out of range" $V --latent -3
expect 2 "--latent: 0 is out of range" $V --latent 0
expect 2 "--epochs: -1 is out of range" $V --epochs -1
expect 2 "--epochs: 99999999999 is out of range" $V --epochs 99999999999
expect 2 "--beta: nan is out of range" $V --beta nan
expect 2 "--lr: inf is out of range" $V --lr inf
expect 2 "--iwae-k: 0 is out of range" $V --iwae-k 0
expect 2 "--iwae-k-train" $V --iwae-k-train 5 --beta 2
expect 2 "--iwae-k-train 100 times --batch 8192" $V --iwae-k-train 100 --batch 8192
expect 2 "--batch: 0 is out of range" "$B/mlp_fashion" --data "$S" --batch 0
expect 2 "--epochs: 99999999999 is out of range" "$B/mlp_fashion" --data "$S" --epochs 99999999999
expect 2 "--batch: 0 is out of range" "$B/ae_fashion" --data "$S" --batch 0
expect 2 "--code: 0 is out of range" "$B/ae_fashion" --data "$S" --code 0
C="$B/cnn_attention_fashion --data $S --out $T/c/cnn.safetensors --maps $T/c/maps.png"
expect 2 "--pad: 5 is out of range" $C --pad 5
expect 2 "--lr: 0 is out of range" $C --lr 0
expect 2 "--weight-decay: -1 is out of range" $C --weight-decay -1
expect 2 "unknown flag '--attention'" $C --attention
expect 2 "--no-attention trains a second net: it needs --epochs 1 or more" $C --no-attention --load "$T/none.safetensors"
expect 2 "--no-attention trains a second net" $C --no-attention --epochs 0
[ -e "$T/v" ] && bad "a refused command line created the output directory" || ok
[ -e "$T/c" ] && bad "a refused command line created cnn_attention_fashion's output directory" || ok

# ---- small and odd data sets run to the end ----
expect 0 'on 5 images' $V --quick --latent 2
expect 0 '^pictures:' "$B/vae_fashion" --quick --data "$T/one" --out "$T/v1" --latent 2 --iwae-k-train 3
expect 0 'test accuracy' "$B/mlp_fashion" --quick --data "$S" --out "$T/mlp.safetensors" --batch 64
expect 0 'test accuracy' "$B/mlp_fashion" --data "$S" --out "$T/mlp.safetensors" --batch 1000 --epochs 1
expect 0 '^pictures:' "$B/ae_fashion" --quick --data "$S" --out "$T/ae"
expect 0 '^pictures:' "$B/ae_fashion" --quick --data "$T/one" --out "$T/ae1"
expect 0 '^pictures:' "$B/vae_fashion" --quick --data "$T/small14" --out "$T/v14" --latent 2 --hidden 32
[ "$(png_size "$T/v14/reconstructions.png")" = 121x121 ] && ok || bad "14x14 reconstructions.png is $(png_size "$T/v14/reconstructions.png"), want 121x121"
[ "$(png_size "$T/v14/manifold_2d.png")" = 301x301 ] && ok || bad "14x14 manifold_2d.png is $(png_size "$T/v14/manifold_2d.png"), want 301x301"
[ "$(png_size "$T/v/reconstructions.png")" = 146x59 ] && ok || bad "5 test images: reconstructions.png is $(png_size "$T/v/reconstructions.png"), want 146x59"
expect 0 'without attention [0-9.]+%' "$B/cnn_attention_fashion" --quick --no-attention --data "$S" --out "$T/c5/m.safetensors" --maps "$T/c5/maps.png"
grep -q '"test_acc_no_attention": ' "$T/log" && ok || bad "cnn_attention_fashion --no-attention: no test_acc_no_attention in the summary"
[ "$(png_size "$T/c5/maps.png")" = 504x324 ] && ok || bad "5 test images: cnn maps.png is $(png_size "$T/c5/maps.png"), want 504x324"
expect 0 '^pictures:' "$B/cnn_attention_fashion" --quick --data "$T/one" --out "$T/c1/m.safetensors" --maps "$T/c1/maps.png" --batch 7
[ "$(png_size "$T/c1/maps.png")" = 144x324 ] && ok || bad "1 test image: cnn maps.png is $(png_size "$T/c1/maps.png"), want 144x324"
expect 0 '^pictures:' "$B/cnn_attention_fashion" --quick --data "$T/small14" --out "$T/c14/m.safetensors" --maps "$T/c14/maps.png" --pad 4
[ "$(png_size "$T/c14/maps.png")" = 438x198 ] && ok || bad "14x14 cnn maps.png is $(png_size "$T/c14/maps.png"), want 438x198"

# ---- bad data: status 1 and what is wrong ----
for ex in vae_fashion mlp_fashion ae_fashion cnn_attention_fashion; do
    expect 1 'label 99 is 12, not a class 0..9' "$B/$ex" --quick --data "$T/label12" --out "$T/x_$ex"
    expect 1 'train-images-idx3-ubyte \(3 dimensions, 100 items\) and train-labels-idx1-ubyte \(1 dimensions, 99 items\) do not match' \
        "$B/$ex" --quick --data "$T/count" --out "$T/x_$ex"
    expect 1 'training images are 28x28 but test images 14x14' "$B/$ex" --quick --data "$T/sizes" --out "$T/x_$ex"
    expect 1 'make data' "$B/$ex" --quick --data "$T/nowhere" --out "$T/x_$ex"
done

# ---- output that cannot be written: status 1 before any training ----
: > "$T/file"
expect 1 'cannot create directory' "$B/vae_fashion" --quick --data "$S" --out "$T/file/sub"
grep -q '^epoch' "$T/log" && bad "vae_fashion trained before finding --out unwritable" || ok
expect 1 'cannot create directory' "$B/ae_fashion" --quick --data "$S" --out "$T/file/sub"
expect 1 'cannot write' "$B/mlp_fashion" --quick --data "$S" --out "$T/file/m.safetensors"
grep -q '^epoch' "$T/log" && bad "mlp_fashion trained before finding --out unwritable" || ok
expect 1 'is a directory' "$B/mlp_fashion" --quick --data "$S" --out "$T"
expect 1 'cannot write files in' "$B/cnn_attention_fashion" --quick --data "$S" --out "$T/file/m.safetensors" --maps "$T/cm.png"
grep -q '^epoch' "$T/log" && bad "cnn_attention_fashion trained before finding --out unwritable" || ok
expect 1 'is a directory' "$B/cnn_attention_fashion" --quick --data "$S" --out "$T/cm.safetensors" --maps "$T"

# ---- --load: alone it evaluates; with --epochs it trains on; a failure prints no summary ----
expect 0 '^saved' "$B/vae_fashion" --quick --data "$S" --out "$T/m" --hidden 16
expect 0 '^loaded' "$B/vae_fashion" --quick --data "$S" --out "$T/m2" --hidden 16 --load "$T/m/vae.safetensors"
grep -qE '^epoch|^saved' "$T/log" && bad "vae_fashion --load without --epochs trained or saved" || ok
expect 0 '^epoch  2' "$B/vae_fashion" --quick --data "$S" --out "$T/m3" --hidden 16 --load "$T/m/vae.safetensors" --epochs 2
grep -q "^saved $T/m3/vae.safetensors" "$T/log" && ok || bad "vae_fashion --load --epochs 2 did not save"
expect 1 "tensor 'enc.0.weight' has shape" "$B/vae_fashion" --quick --data "$S" --out "$T/m4" --hidden 17 --load "$T/m/vae.safetensors"
expect 1 'cannot open' "$B/vae_fashion" --quick --data "$S" --out "$T/m4" --load "$T/none.safetensors"
expect 1 'cannot open' "$B/mlp_fashion" --quick --data "$S" --load "$T/none.safetensors"
expect 1 'cannot open' "$B/ae_fashion" --quick --data "$S" --out "$T/m4" --load "$T/none.safetensors"
# a model whose latent means are NaN: training refuses its gradient, evaluation its loss
"$PYTHON" - "$T/m/vae.safetensors" "$T/nan.safetensors" <<'PY'
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
head = json.loads(blob[8:8 + n])
begin, end = head["vae.head.mu.bias"]["data_offsets"]
data = bytearray(blob[8 + n:])
data[begin:end] = struct.pack("<f", float("nan")) * ((end - begin) // 4)
open(sys.argv[2], "wb").write(blob[:8 + n] + bytes(data))
PY
expect 1 'not finite' "$B/vae_fashion" --quick --data "$S" --out "$T/m5" --hidden 16 --load "$T/nan.safetensors"
expect 1 'not finite' "$B/vae_fashion" --quick --data "$S" --out "$T/m5" --hidden 16 --load "$T/nan.safetensors" --epochs 1
expect 0 '^saved' "$B/mlp_fashion" --quick --data "$S" --out "$T/mlp2.safetensors"
expect 0 'test accuracy' "$B/mlp_fashion" --quick --data "$S" --load "$T/mlp2.safetensors" --epochs 1 --out "$T/mlp3.safetensors"
grep -q "^saved $T/mlp3.safetensors" "$T/log" && ok || bad "mlp_fashion --load --epochs 1 did not save"
expect 0 '^saved' "$B/cnn_attention_fashion" --quick --data "$S" --out "$T/cnn.safetensors" --maps "$T/cnn.png"
expect 0 'test accuracy' "$B/cnn_attention_fashion" --quick --data "$S" --load "$T/cnn.safetensors" --maps "$T/cnn2.png"
grep -qE '^epoch|^saved' "$T/log" && bad "cnn_attention_fashion --load without --epochs trained or saved" || ok
expect 1 'cannot open' "$B/cnn_attention_fashion" --quick --data "$S" --load "$T/none.safetensors" --maps "$T/cnn2.png"
expect 1 'net.stem.conv.weight' "$B/cnn_attention_fashion" --quick --data "$S" --load "$T/mlp2.safetensors" --maps "$T/cnn2.png"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
