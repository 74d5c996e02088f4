#!/usr/bin/env python3
"""Writes or checks safetensors files independently of attnvae.h: the file
layout with struct and json, the F16, BF16 and F64 values with PyTorch, so
the C reader and writer are tested against a second implementation of the
format and against torch's own conversions.

usage: make_safetensors.py write DIR  -- fixtures py.safetensors and
                                         py_dtypes.safetensors for test_io
       make_safetensors.py check DIR  -- verify c_written.safetensors and
                                         c_dtypes.safetensors from test_io
"""
import json
import math
import os
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


def write_file(path, entries, meta):
    """entries: (name, dtype, shape, bytes); data in reverse order and header
    keys sorted, so the reader must not assume the two orders agree."""
    header = {"__metadata__": meta}
    blobs, off = [], 0
    for name, dtype, shape, data in reversed(entries):
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    # default json.dumps: ", " / ": " separators, non-ASCII as \u escapes
    h = json.dumps(header, sort_keys=True).encode("ascii")
    h += b" " * (-(8 + len(h)) % 8)  # pad like the reference writer
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_file(path):
    """The header (metadata removed), the metadata and the data section."""
    with open(path, "rb") as fp:
        raw = fp.read()
    (n,) = struct.unpack_from("<Q", raw)
    assert (8 + n) % 8 == 0, "data section not 8-byte aligned"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    return header, meta, raw[8 + n:]


def write_f32(path):
    write_file(path, [(name, "F32", shape, struct.pack("<%df" % numel(shape), *values(shape, f)))
                      for name, shape, f in TENSORS], META)


def check_f32(path):
    header, meta, data = read_file(path)
    assert meta == META, "metadata differs"
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


# ---- F16, BF16, F64 ---------------------------------------------------------
def tensor_bytes(t):
    """Little-endian bytes of a tensor, by its bits (numpy has no bfloat16)."""
    import torch
    bits = {torch.float16: torch.int16, torch.bfloat16: torch.int16,
            torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype]
    return t.contiguous().view(bits).numpy().astype("<i%d" % t.element_size()).tobytes()


def f64_values():
    """Doubles that round to float in every way that matters, and random ones."""
    import torch
    fmax = float.fromhex("0x1.fffffep+127")
    special = [0.0, -0.0, 1.0, -1.0, math.pi, math.e, 0.1, 1 / 3,
               1 + 2 ** -24, 1 + 3 * 2 ** -24, 1 + 2 ** -24 + 2 ** -52, 1 - 2 ** -25,
               fmax, -fmax, fmax + 2 ** 103, -(fmax + 2 ** 103), fmax + 2 ** 103 - 2 ** 75,
               fmax + 2 ** 102, 2.0 ** 128, 1e300, -1e300, 1e39,
               2.0 ** -126, 2.0 ** -149, 2.0 ** -150, 1.5 * 2 ** -150, 2.0 ** -150 + 2 ** -200,
               -(2.0 ** -150), 3 * 2.0 ** -150, 1e-50, -1e-50, 1e-45, 1e-40, 5e-324,
               math.inf, -math.inf, math.nan, -math.nan]
    g = torch.Generator().manual_seed(7)
    scales = 10.0 ** torch.randint(-47, 40, (2000,), generator=g).double()
    return torch.cat([torch.tensor(special, dtype=torch.float64),
                      torch.randn(2000, generator=g, dtype=torch.float64) * scales])


def write_dtypes(path):
    import torch
    patterns = torch.arange(65536, dtype=torch.int32).to(torch.int16)  # every 16-bit pattern
    g = torch.Generator().manual_seed(3)
    tensors = [
        ("f16_all", patterns.view(torch.float16)),
        ("bf16_all", patterns.view(torch.bfloat16)),
        ("f64_values", f64_values()),
        ("bf16_scalar", torch.tensor(-1.7, dtype=torch.bfloat16)),
        ("f16_matrix", (torch.randn(5, 3, 2, generator=g) * 100).to(torch.float16)),
        ("f64_matrix", torch.randn(4, 7, generator=g, dtype=torch.float64)),
    ]
    name_of = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
    entries = []
    for name, t in tensors:
        entries.append((name, name_of[t.dtype], list(t.shape), tensor_bytes(t)))
        # torch's own conversion, which the C reader must match bit for bit
        entries.append((name + ".want", "F32", list(t.shape), tensor_bytes(t.to(torch.float32))))
    write_file(path, entries, {"written by": "tests/make_safetensors.py"})


def check_dtypes(path):
    """The C writer's F16, BF16 and F64 tensors against torch's conversion of
    the same floats, bit for bit; a NaN must stay a NaN with its sign (torch
    keeps F16's sign but not BF16's, and neither keeps payloads)."""
    import torch
    header, meta, data = read_file(path)
    assert meta == {"what": "dtype test"}, meta
    as_torch = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}

    def load(name, dtype):
        e = header[name]
        assert e["dtype"] == dtype, (name, e)
        begin, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=as_torch[dtype])
        assert t.numel() == numel(e["shape"]), (name, e)
        return t.reshape(e["shape"])

    src = load("source", "F32")
    nan = torch.isnan(src)
    for name, dtype in (("source.f16", "F16"), ("source.bf16", "BF16"), ("source.f64", "F64")):
        got = load(name, dtype)
        want = src.to(as_torch[dtype])
        got_bits, want_bits = got.view(-1), want.view(-1)
        if dtype != "F64":
            got_bits, want_bits = got_bits.view(torch.int16), want_bits.view(torch.int16)
        else:
            got_bits, want_bits = got_bits.view(torch.int64), want_bits.view(torch.int64)
        ok = nan.view(-1) | (got_bits == want_bits)
        bad = (~ok).nonzero().view(-1)
        assert bad.numel() == 0, "%s: %d values differ from torch, first: %r written as %r, torch %r" % (
            name, bad.numel(), src.view(-1)[bad[0]].item(), got.view(-1)[bad[0]].item(),
            want.view(-1)[bad[0]].item())
        back = got.to(torch.float64).view(-1)[nan.view(-1)]
        assert bool(torch.isnan(back).all()), "%s: a NaN was not written as NaN" % name
        assert bool((torch.signbit(back) == torch.signbit(src.view(-1)[nan.view(-1)])).all()), \
            "%s: a NaN lost its sign" % name
    print("info: %d floats written as F16, BF16 and F64 by attnvae match torch bit for bit (%d NaNs)"
          % (src.numel(), int(nan.sum())))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    d = sys.argv[2]
    if sys.argv[1] == "write":
        write_f32(os.path.join(d, "py.safetensors"))
        write_dtypes(os.path.join(d, "py_dtypes.safetensors"))
    else:
        check_f32(os.path.join(d, "c_written.safetensors"))
        check_dtypes(os.path.join(d, "c_dtypes.safetensors"))
