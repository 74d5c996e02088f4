#!/usr/bin/python3
"""PyTorch reference for tests/test_vae.c.

Usage: torch_vae.py DIR

Reads DIR/model.safetensors (written by av_model_save) and
DIR/data.safetensors (x [B, 12] in [0, 1], eps [B, 3]), runs the same
12-8-3-8-12 ReLU VAE in float64:

    h = relu(enc.0(x)); mu = head.mu(h); logvar = head.logvar(h)
    z = mu + exp(logvar / 2) * eps
    logits = dec.1(relu(dec.0(z)))
    loss = mean_b( sum_j BCEWithLogits(logits, x)[b, j] + KL(N(mu, e^logvar) || N(0, I))[b] )

and writes DIR/torch_out.safetensors (loss, intermediates, "grad.<name>" for
every parameter) and DIR/sgd.safetensors (parameters after one SGD step with
lr 0.1, under the model's own names) for the C side to compare / load.

Debian ships no safetensors package, so the format is read and written here
with struct + json + numpy. Exit status: 0 ok, 77 torch missing, 1 error.
"""
import json
import os
import struct
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)

LR = 0.1


def read_safetensors(path):
    with open(path, "rb") as fh:
        blob = fh.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError("%s: tensor %s has dtype %s" % (path, name, info["dtype"]))
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype="<f4")
        out[name] = arr.reshape(info["shape"]).astype(np.float64)
    return out, meta


def write_safetensors(path, tensors):
    header = {}
    chunks = []
    offset = 0
    for name, value in tensors.items():
        arr = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
        raw = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # data section 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        fh.write(b"".join(chunks))
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 2:
        print("usage: torch_vae.py DIR")
        return 1
    d = sys.argv[1]
    params, meta = read_safetensors(os.path.join(d, "model.safetensors"))
    if meta.get("format") != "attnvae-model":
        print("torch_vae.py: unexpected model metadata %r" % (meta,))
        return 1
    data, _ = read_safetensors(os.path.join(d, "data.safetensors"))
    expected = ["dec.0.bias", "dec.0.weight", "dec.1.bias", "dec.1.weight", "enc.0.bias", "enc.0.weight",
                "head.logvar.bias", "head.logvar.weight", "head.mu.bias", "head.mu.weight"]
    if sorted(params) != expected:
        print("torch_vae.py: unexpected parameter names %s" % sorted(params))
        return 1

    torch.set_default_dtype(torch.float64)
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(data["x"], dtype=torch.float64)
    eps = torch.tensor(data["eps"], dtype=torch.float64)

    def linear(t, name):
        return F.linear(t, P[name + ".weight"], P[name + ".bias"])

    h = torch.relu(linear(x, "enc.0"))
    mu = linear(h, "head.mu")
    logvar = linear(h, "head.logvar")
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = linear(torch.relu(linear(z, "dec.0")), "dec.1")
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
    loss = (nll + kl).mean()
    loss.backward()

    out = {"loss": loss.detach().numpy(), "mu": mu.detach().numpy(), "logvar": logvar.detach().numpy(),
           "z": z.detach().numpy(), "logits": logits.detach().numpy(), "nll": nll.detach().numpy(),
           "kl": kl.detach().numpy()}
    for name, p in P.items():
        out["grad." + name] = p.grad.numpy()
    write_safetensors(os.path.join(d, "torch_out.safetensors"), out)
    write_safetensors(os.path.join(d, "sgd.safetensors"),
                      {name: (p - LR * p.grad).detach().numpy() for name, p in P.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
