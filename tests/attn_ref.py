#!/usr/bin/env python3
"""PyTorch side of tests/test_attn_ref.c, in float64.

Usage: attn_ref.py IN OUT. IN holds named arrays from the C program
("case:field ndim d0 .. dk" on one line, the values on the next). A case
with a field "q" is scaled dot-product attention; any other case is named
by the path of an nn.MultiheadAttention, whose state_dict (float32) this
script writes to attn_ref.<case>.safetensors beside OUT, with struct and json
only, for attnvae's av_model_load. Results go to OUT in IN's format
(tests/pyref.py reads and writes them, and skips without torch).
"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in tests/
from pyref import torch, F, nn, D, read_cases, write_arrays, save_safetensors, causal_mask  # noqa: E402


def attention(q, k, v, mask, causal, scale):
    """softmax(q kᵀ scale + mask) v and its weights, twice: as PyTorch gives
    them (NaN for a query that sees no key), and with such queries' weights
    set to 0 before NaN can appear, so that they pass no gradient (attnvae's
    convention; the other rows are the same bits)"""
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s + mask
    if causal:
        s = s + causal_mask(q.shape[-2], k.shape[-2])
    w = F.softmax(s, -1)
    dead = torch.isneginf(s).all(-1, keepdim=True)
    w0 = F.softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    live = ~dead.expand_as(w)
    assert torch.equal(w[live], w0[live])
    return w @ v, w, w0 @ v, w0


def sdpa_case(cs, a, out):
    causal, scale = int(a["cfg"][0]), float(a["cfg"][1])
    scale = scale or a["q"].shape[-1] ** -0.5
    mask = a.get("mask")
    out[cs + ":y"], out[cs + ":w"], _, _ = attention(a["q"], a["k"], a["v"], mask, causal, scale)
    # tiled: loss sum(y r); naive: the weights too, sum(y r) + sum(w rw)
    for path in ("tiled", "naive"):
        leaves = {n: a[n].clone().requires_grad_(True) for n in ("q", "k", "v")}
        if mask is not None:
            leaves["mask"] = mask.clone().requires_grad_(True)
        _, _, y0, w0 = attention(leaves["q"], leaves["k"], leaves["v"], leaves.get("mask"), causal, scale)
        loss = (y0 * a["r"]).sum()
        if path == "naive":
            loss = loss + (w0 * a["rw"]).sum()
        loss.backward()
        for n, t in leaves.items():
            out["%s:%s.d.%s" % (cs, path, n)] = t.grad


def mha_case(cs, a, out, out_dir, seed):
    E, H, kdim, vdim, bias, causal = (int(x) for x in a["cfg"])
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(E, H, bias=bool(bias), kdim=kdim, vdim=vdim, batch_first=True)
    with torch.no_grad():  # PyTorch starts biases at 0; other values show where each part lands
        for name, p in mha.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    save_safetensors(os.path.join(out_dir, "attn_ref.%s.safetensors" % cs),
                     {"%s.%s" % (cs, n): t for n, t in mha.state_dict().items()})
    mha = mha.to(D)

    tq, tk = a["query"].shape[-2], a.get("key", a["query"]).shape[-2]
    kpm = None
    if "lengths" in a:  # True: ignore that key
        kpm = torch.arange(tk) >= a["lengths"].unsqueeze(-1)
        if a["query"].dim() == 2:
            kpm = kpm[0]
    attn_mask = a.get("attn_mask")
    if causal:
        attn_mask = causal_mask(tq, tk) if attn_mask is None else attn_mask + causal_mask(tq, tk)

    def forward(average):
        query = a["query"].clone().requires_grad_(True)
        key = a["key"].clone().requires_grad_(True) if "key" in a else query
        value = a["value"].clone().requires_grad_(True) if "value" in a else key
        y, w = mha(query, key, value, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=True,
                   average_attn_weights=average)
        inputs = {"query": query, "key": key, "value": value}
        return y, w, {n: t for n, t in inputs.items() if n == "query" or n in a}

    # tiled: loss sum(y r); naive: the weights too, sum(y r) + sum(w rw)
    for path in ("tiled", "naive"):
        mha.zero_grad()
        y, w, inputs = forward(False)
        loss = (y * a["r"]).sum()
        if path == "naive":
            loss = loss + (w * a["rw"]).sum()
        loss.backward()
        out[cs + ":y"], out[cs + ":w"] = y, w
        for n, t in inputs.items():
            out["%s:%s.d.%s" % (cs, path, n)] = t.grad
        for n, p in mha.named_parameters():
            out["%s:%s.d.%s.%s" % (cs, path, cs, n)] = p.grad.clone()  # zero_grad reuses it
    out[cs + ":w_avg"] = forward(True)[1]


def main():
    out = {}
    out_dir = os.path.dirname(os.path.abspath(sys.argv[2]))
    for seed, (cs, a) in enumerate(read_cases(sys.argv[1]).items()):
        if "q" in a:
            sdpa_case(cs, a, out)
        else:
            mha_case(cs, a, out, out_dir, seed)
    write_arrays(sys.argv[2], out)


if __name__ == "__main__":
    main()
