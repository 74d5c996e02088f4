#!/usr/bin/env python3
"""Writes or checks safetensors files independently of attnvae.h, using only
struct and json, so the C reader and writer are tested against a second
implementation of the format.

usage: make_safetensors.py write OUT   -- fixture that tests/test_io.c loads
       make_safetensors.py check IN    -- verify the file test_io.c wrote
"""
import json
import struct
import sys

# name, shape, value of element i; kept in sync with tests/test_io.c
TENSORS = [
    ("alpha", [2, 3], lambda i: i * 0.5 - 1),
    ("beta.weight", [4], lambda i: (i + 1) * 1.25),
    ("scalar", [], lambda i: 3.25),
    ("conv", [2, 1, 2, 3], lambda i: (i - 6) / 8),
    ("empty", [0, 4], lambda i: 0.0),
    ("uni\u00e9", [1], lambda i: 42.0),
]
META = {"format": "pt", "quote": 'say "hi"\n', "caf\u00e9": "na\u00efve \U0001F600"}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def values(shape, f):
    return [float(f(i)) for i in range(numel(shape))]


def write(path):
    header = {"__metadata__": META}
    blobs, off = [], 0
    # data in reverse order, header keys sorted: the reader must not assume
    # that header order and data order agree
    for name, shape, f in reversed(TENSORS):
        data = struct.pack("<%df" % numel(shape), *values(shape, f))
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    # default json.dumps: ", " / ": " separators, non-ASCII as \u escapes
    h = json.dumps(header, sort_keys=True).encode("ascii")
    h += b" " * (-(8 + len(h)) % 8)  # pad like the reference writer
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def check(path):
    with open(path, "rb") as fp:
        raw = fp.read()
    (n,) = struct.unpack_from("<Q", raw)
    assert (8 + n) % 8 == 0, "data section not 8-byte aligned"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    assert header.pop("__metadata__") == META, "metadata differs"
    assert list(header) == [t[0] for t in TENSORS], "tensor order differs"
    off = 0
    for name, shape, f in TENSORS:
        e = header[name]
        size = 4 * numel(shape)
        assert e == {"dtype": "F32", "shape": shape,
                     "data_offsets": [off, off + size]}, (name, e)
        got = list(struct.unpack_from("<%df" % numel(shape), data, off))
        assert got == values(shape, f), (name, got)
        off += size
    assert off == len(data), "data section not exactly covered"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    (write if sys.argv[1] == "write" else check)(sys.argv[2])
