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

# ---- text_classifier: made-up fortune files (entries end at a line '%') ----
F=$T/fortunes
mkdir -p "$F/empty" "$F/few" "$F/shared"
"$PYTHON" - "$F" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
words = {"cats": "purr whiskers mouse meow tail nap fur claws", "ships": "sail mast harbor anchor wave deck crew port"}
common = "the a of and to in is it".split()
def entries(topic, n):
    return ["%d " % i + " ".join(rnd.choice(words[topic].split() + common) for _ in range(rnd.randrange(3, 30)))
            for i in range(n)]
def write(path, items, end="\n%\n"):
    with open(path, "w") as f:
        f.write(end.join(items) + "\n")
cats = entries("cats", 60)
for d in ("", "empty", "few", "shared"):
    write(os.path.join(root, d, "cats"), cats)
write(os.path.join(root, "ships"), entries("ships", 60), "\r\n%\r\n")   # CRLF lines
write(os.path.join(root, "other"), entries("ships", 40) + ["caf\u00e9 \u00fcber na\u00efve"])   # only for word vectors
open(os.path.join(root, "empty", "ships"), "w").write("%\n%\n   \n%\n")
write(os.path.join(root, "few", "ships"), entries("ships", 4))
write(os.path.join(root, "shared", "ships"), cats[::-1])   # every entry also in cats
PY
C="$B/text_classifier --data $F --categories cats,ships --out $T/tc.safetensors --png $T/tc.png"
expect 0 '^usage:' $C --help
[ -e "$T/tc.safetensors" ] && bad "text_classifier --help wrote its model" || ok
for flag in data categories out png load epochs batch lr embed hidden attn dropout max-len min-count pretrain-epochs seed quick; do
    grep -qE -- "^  --$flag( |$)" "$T/log" && ok || bad "text_classifier --help does not list --$flag"
done
expect 2 "unknown flag '--frobnicate'" $C --frobnicate
expect 2 "--hidden: 0 is out of range" $C --hidden 0
expect 2 "--max-len: 'ten' is not an integer" $C --max-len ten
expect 2 "--dropout: 1 is out of range" $C --dropout 1
expect 2 "--load needs a value" $C --load
expect 1 "make deps" $C --quick --data "$T/nowhere"
expect 1 "cannot read .*/nothing" $C --quick --categories cats,nothing
expect 1 "name at least two categories" $C --quick --categories cats
expect 1 "'cats' is named twice" $C --quick --categories cats,cats
expect 1 "'\.\./cats' is not a category name" $C --quick --categories ../cats,ships
expect 1 "ships holds 0 entries" $C --quick --data "$F/empty"
expect 1 "ships holds 4 entries .*, fewer than the 10" $C --quick --data "$F/few"
expect 1 "cats holds 0 entries" $C --quick --data "$F/shared"
expect 1 "cannot write" $C --quick --out "$T/file/m.safetensors"
grep -q '^epoch' "$T/log" && bad "text_classifier trained before finding --out unwritable" || ok
expect 1 "is a directory" $C --quick --png "$T"
expect 0 '^saved' $C --quick --epochs 3
grep -qE '^data: 120 entries in 2 categories' "$T/log" && ok || bad "text_classifier: the CRLF file did not give 60 entries"
grep -qE '^  (cats|ships) -> (cats|ships): ' "$T/log" && ok || bad "text_classifier printed no most-attended tokens"
grep -qE '"test_acc": [01]\.[0-9]+, "baseline_test_acc": [01]\.[0-9]+' "$T/log" && ok || bad "text_classifier: no test_acc and baseline_test_acc"
[ "$("$PYTHON" -c 'import sys; print(open(sys.argv[1],"rb").read(8) == b"\x89PNG\r\n\x1a\n")' "$T/tc.png")" = True ] && ok || bad "text_classifier wrote no PNG"
expect 0 '^saved' $C --quick --pretrain-epochs 0 --max-len 5 --out "$T/tc0.safetensors"
printf 'the mast and the anchor\nwhiskers purr\n\n!!!\nzzz qqq\n' > "$T/lines"
expect 0 '"lines": 5' sh -c "$B/text_classifier --load $T/tc.safetensors < $T/lines"
[ "$(grep -cE '^(cats|ships) [01]\.[0-9][0-9]  ' "$T/log")" -eq 4 ] && ok || bad "text_classifier --load did not classify the 4 lines with tokens"
grep -qE '^-  \(no words\)' "$T/log" && ok || bad "text_classifier --load: an empty line is not '(no words)'"
expect 0 '"lines": 0' sh -c "$B/text_classifier --load $T/tc0.safetensors < /dev/null"
expect 1 'cannot open' $C --load "$T/none.safetensors"
"$PYTHON" -c 'import json, struct, sys
head = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head + struct.pack("<f", 1))' "$T/other.safetensors"
expect 1 'not a text_classifier model' sh -c "$B/text_classifier --load $T/other.safetensors < $T/lines"
head -c 300 "$T/tc.safetensors" > "$T/cut.safetensors"
expect 1 'error: ' sh -c "$B/text_classifier --load $T/cut.safetensors < $T/lines"

# ---- charlm: flags, text that is missing, tiny or odd, and model files that are not its own ----
L="$B/charlm --quick --gen-tokens 2 --length 4"
C="$L --steps 2"
printf 'To be or not to be.\n' > "$T/tiny.txt"
printf 'abc' > "$T/three.txt"
mkdir -p "$T/texts" && printf 'one\n' > "$T/texts/a" && printf 'caf\303\251 \000\377 two\n' > "$T/texts/b" && : > "$T/texts/empty"
expect 0 '^usage:' $C --out "$T/help_charlm" --help
[ -e "$T/help_charlm" ] && bad "charlm --help created its output" || ok
for flag in text arch out load resume steps batch context d-model layers heads ff activation dropout lr warmup clip \
    val-frac eval-every ckpt-every seed prompt length temperature top-k top-p gen-context gen-tokens quick; do
    grep -qE -- "^  --$flag( |$)" "$T/log" && ok || bad "charlm --help does not list --$flag"
done
expect 2 "unknown flag '--frobnicate'" $C --out "$T/c" --frobnicate
expect 2 "--arch: 'gru' is not transformer or lstm" $C --out "$T/c" --arch gru
expect 2 "--activation: 'tanh' is not relu or gelu" $C --out "$T/c" --activation tanh
expect 2 "--heads 3 must divide --d-model 64" $C --out "$T/c" --heads 3
expect 2 "--gen-tokens 40 must be less than --gen-context 40" $C --out "$T/c" --gen-context 40 --gen-tokens 40
expect 2 "--layers: 9 is out of range|an LSTM has at most 8 --layers" $C --out "$T/c" --arch lstm --layers 9
expect 2 "--top-p: 0 is out of range" $C --out "$T/c" --top-p 0
expect 2 "--context: 0 is out of range" $C --out "$T/c" --context 0
expect 2 "--temperature: -1 is out of range" $C --out "$T/c" --temperature -1
expect 2 "--load only evaluates" $C --out "$T/c" --load "$T/none.safetensors" --steps 5
[ -e "$T/c" ] && bad "a refused charlm command line created the output directory" || ok
expect 1 "cannot read $T/nowhere" $C --text "$T/nowhere" --out "$T/c"
expect 1 'too little text \(3 bytes in 1 files\)' $C --text "$T/three.txt" --out "$T/c"
expect 0 'windows of 17 bytes, not 64' $C --text "$T/tiny.txt" --out "$T/c1"
expect 0 'from 3 files' $C --text "$T/texts" --out "$T/c2" --prompt "caf"
expect 0 '^summary' $C --text "$T/tiny.txt" --out "$T/c3" --arch lstm --layers 1 --temperature 0 --top-k 1
expect 1 'cannot open' $L --out "$T/c" --load "$T/none.safetensors"
expect 1 'not a charlm model' $L --out "$T/c" --load "$T/mlp2.safetensors"
expect 1 'not a charlm model' $C --out "$T/c" --resume "$T/mlp2.safetensors"
expect 1 'cannot create directory' $C --text "$T/tiny.txt" --out "$T/file/sub"
expect 0 '^loaded' $L --text "$T/tiny.txt" --out "$T/c4" --load "$T/c1/charlm.safetensors" --prompt "To be"
expect 1 "cannot read $T/nowhere" $L --text "$T/nowhere" --out "$T/c4" --load "$T/c1/charlm.safetensors"
# ---- seq2seq_dates: flags, --load, translation, the C-locale fallback ----
D="$B/seq2seq_dates"
expect 0 '^usage:' "$D" --out "$T/dh" --help
[ -e "$T/dh" ] && bad "seq2seq_dates --help created its output" || ok
"$D" --help > "$T/help.txt" 2>&1
for flag in out model load input rnn-steps transformer-steps batch lr d-model heads layers hidden test held-formats \
    held-days beam seed quick; do
    grep -qE -- "^  --$flag( |$)" "$T/help.txt" && ok || bad "seq2seq_dates --help does not list --$flag"
done
expect 2 "--model: 'gru' is not rnn, transformer or both" "$D" --out "$T/d" --model gru
expect 2 "--input needs --load" "$D" --out "$T/d" --input "1 May 2020"
expect 2 "--d-model 66 is not a multiple of --heads 4" "$D" --out "$T/d" --d-model 66
expect 2 "--held-formats: 0.9 is out of range" "$D" --out "$T/d" --held-formats 0.9
expect 2 "--beam: 0 is out of range" "$D" --out "$T/d" --beam 0
expect 2 "unknown flag '--epochs'" "$D" --out "$T/d" --epochs 3
[ -e "$T/d" ] && bad "a refused seq2seq_dates command line created the output directory" || ok
expect 1 'cannot create directory' "$D" --quick --out "$T/file/sub"
grep -q 'trained' "$T/log" && bad "seq2seq_dates trained before finding --out unwritable" || ok
expect 1 'cannot open' "$D" --load "$T/none.safetensors" --input "1 May 2020"
expect 1 'not a seq2seq_dates model' "$D" --load "$T/m/vae.safetensors" --input "1 May 2020"
# a short run of each model, then translation: one ISO-shaped line per input line, empty lines too
expect 0 '^picture: .*attention_rnn.png' "$D" --quick --out "$T/d" --model rnn --test 20
expect 0 '^picture: .*attention_transformer.png' "$D" --quick --out "$T/d" --model transformer --test 20 --beam 2
printf '23 November 2026\n\n23.11.2026\n' | "$D" --load "$T/d/rnn.safetensors" > "$T/iso" 2> "$T/log"
[ "$(grep -cE '^[0-9-]{0,11}$' "$T/iso")" = 3 ] && ok || bad "seq2seq_dates --load rnn: not three lines of ISO characters"
check "seq2seq_dates --load transformer --input --beam 3" sh -c \
    "'$D' --load '$T/d/transformer.safetensors' --input 'lundi 23 novembre 2026' --beam 3 | grep -qE '^[0-9-]{0,11}\$'"
expect 0 '^saved .*rnn.safetensors' "$D" --quick --out "$T/d2" --load "$T/d/rnn.safetensors" --rnn-steps 3 --test 20
# a config that does not fit: refused with the reason, before any weight is read
"$PYTHON" - "$T/d/rnn.safetensors" "$T/badcfg.safetensors" <<'PY'
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
head = json.loads(blob[8:8 + n])
begin, end = head["config"]["data_offsets"]
data = bytearray(blob[8 + n:])
data[begin:begin + 4] = struct.pack("<f", 7.0)
open(sys.argv[2], "wb").write(blob[:8 + n] + bytes(data))
PY
expect 1 'config\[0\] is 7, not a whole number in 0..1' "$D" --load "$T/badcfg.safetensors" --input "1 May 2020"
# without locales-all: `locale -a` lists only C, and the C locale's formats train
mkdir -p "$T/bin"
printf '#!/bin/sh\nprintf "C\\nPOSIX\\n"\n' > "$T/bin/locale"
chmod +x "$T/bin/locale"
expect 0 'only the C locale is installed' env PATH="$T/bin:$PATH" "$D" --quick --out "$T/dc" --test 20
grep -q '^seq2seq_dates: 1 locales, 9 ' "$T/log" && ok || bad "seq2seq_dates with only C: not 1 locale and 9 pairs"
# ---- the convolutional VAE and the GAN ----
CV="$B/conv_vae_fashion --data $S"
SG="$B/sagan_fashion --data $S --fid-net $T/none --vae $T/none"
for ex in conv_vae_fashion sagan_fashion; do
    expect 0 '^usage:' "$B/$ex" --data "$S" --out "$T/help_$ex" --help
    [ -e "$T/help_$ex" ] && bad "$ex --help created its output" || ok
done
"$B/conv_vae_fashion" --help > "$T/help.txt" 2>&1
for flag in data out load epochs latent channels batch lr iwae-k iwae-images no-attention seed quick; do
    grep -qE -- "^  --$flag( |$)" "$T/help.txt" && ok || bad "conv_vae_fashion --help does not list --$flag"
done
"$B/sagan_fashion" --help > "$T/help.txt" 2>&1
for flag in data out load epochs channels batch lr-g lr-d fid-images fid-net vae vae-epochs seed quick; do
    grep -qE -- "^  --$flag( |$)" "$T/help.txt" && ok || bad "sagan_fashion --help does not list --$flag"
done
expect 2 "unknown flag '--attention'" $CV --out "$T/cv" --attention
expect 2 "--channels: 0 is out of range" $CV --out "$T/cv" --channels 0
expect 2 "--iwae-images: 0 is out of range" $CV --out "$T/cv" --iwae-images 0
expect 2 "unknown argument '1'" $CV --out "$T/cv" --no-attention 1
expect 2 "--lr-d: nan is out of range" $SG --out "$T/sg" --lr-d nan
expect 2 "--fid-images: 1 is out of range" $SG --out "$T/sg" --fid-images 1
expect 2 "--fid-net needs a value" $SG --out "$T/sg" --fid-net
[ -e "$T/cv" ] || [ -e "$T/sg" ] && bad "a refused command line created the output directory" || ok
for ex in conv_vae_fashion sagan_fashion; do
    expect 1 'make data' "$B/$ex" --quick --data "$T/nowhere" --out "$T/x_$ex"
    expect 1 'label 99 is 12, not a class 0..9' "$B/$ex" --quick --data "$T/label12" --out "$T/x_$ex"
    expect 1 'training images are 28x28 but test images 14x14' "$B/$ex" --quick --data "$T/sizes" --out "$T/x_$ex"
    expect 1 'the images are 14x14; .* multiples of 4' "$B/$ex" --quick --data "$T/small14" --out "$T/x_$ex"
    expect 1 'cannot create directory' "$B/$ex" --quick --data "$S" --out "$T/file/sub"
done
# small data sets (5 test images, then 1; 40 training images, fewer than a GAN batch) run to the end
expect 0 'on the first 5$' $CV --quick --out "$T/cv" --latent 2
[ "$(png_size "$T/cv/reconstructions.png")" = 146x59 ] && ok || bad "conv VAE, 5 test images: reconstructions.png is $(png_size "$T/cv/reconstructions.png")"
expect 0 '^pictures:' "$B/conv_vae_fashion" --quick --data "$T/one" --out "$T/cv1" --no-attention
expect 0 'fid net: trained' $SG --quick --out "$T/sg"
expect 0 '5 images each' $SG --quick --out "$T/sg" --load "$T/sg"
grep -q '^fid net (small): loaded' "$T/log" && ok || bad "sagan_fashion did not reuse its small feature net"
expect 0 '1 images each' "$B/sagan_fashion" --quick --data "$T/one" --out "$T/sg1" --fid-net "$T/none" --vae "$T/none"
# --load: a model file that does not fit, or is missing
expect 1 "enc.attn" $CV --quick --out "$T/cv2" --load "$T/cv1/conv_vae.safetensors"
expect 1 'cannot open' $CV --quick --out "$T/cv2" --load "$T/none.safetensors"
expect 1 'cannot open' $SG --quick --out "$T/sg2" --load "$T/none"
expect 1 'fid net: .*' "$B/sagan_fashion" --quick --data "$S" --out "$T/sg2" --fid-net "$T/cv/conv_vae.safetensors" --vae "$T/none" --epochs 0

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
