"""The Python half of a cross-check against PyTorch in float64, shared by
tests/attn_ref.py, tests/transformer_ref.py, tests/conv_ref.py and
tests/rnn_ref.py (the C half: tests/pyref.h).

Each script runs as SCRIPT IN OUT. IN holds named arrays from the C program
("case:field ndim d0 .. dk" on one line, the values on the next); results go
to OUT in the same format, state_dicts to safetensors files beside OUT.
Importing this module imports torch; when that fails it writes
"skip <reason>" to OUT and exits 77, so the C side skips instead of failing.
"""
import json
import os
import struct
import sys

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except Exception as e:  # missing or broken install: skip, do not fail
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write("skip %s\n" % str(e).replace("\n", " "))
    sys.exit(77)

D = torch.float64


def read_cases(path):
    """{case: {field: tensor}}, in the order of the file"""
    cases = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for head, values in zip(lines[0::2], lines[1::2]):
        name, ndim, *dims = head.split()
        case, field = name.split(":", 1)
        shape = [int(d) for d in dims[:int(ndim)]]
        cases.setdefault(case, {})[field] = torch.tensor([float(v) for v in values.split()], dtype=D).reshape(shape)
    return cases


def write_arrays(path, out):
    with open(path, "w") as f:
        for name, t in out.items():
            t = torch.as_tensor(t).detach().to(D)
            f.write("%s %d%s\n" % (name, t.dim(), "".join(" %d" % s for s in t.shape)))
            f.write(" ".join("%.17g" % v for v in t.reshape(-1).tolist()) + "\n")


def save_safetensors(path, tensors):
    """float32 safetensors: u64 header length, JSON header, raw little-endian data"""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().to(torch.float32).contiguous()
        data = struct.pack("<%df" % t.numel(), *t.reshape(-1).tolist())
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-(8 + len(h)) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(path + ".tmp", path)


def causal_mask(tq, tk):
    """additive [tq, tk]: query i sees keys j <= i + tk - tq (bottom-right)"""
    i = torch.arange(tq).unsqueeze(1)
    j = torch.arange(tk)
    return torch.zeros(tq, tk, dtype=D).masked_fill(j > i + (tk - tq), float("-inf"))
