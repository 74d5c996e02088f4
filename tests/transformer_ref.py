#!/usr/bin/env python3
"""PyTorch side of tests/test_transformer_ref.c, in float64.

Usage: transformer_ref.py IN OUT (tests/pyref.py reads IN, writes OUT, and
skips without torch). Each case is named by the path of a module, which
this script builds from the case's "cfg" (kind, d_model, nhead,
dim_feedforward, norm_first, gelu, layer_norm_eps, causal): an
nn.TransformerEncoder or nn.TransformerDecoder of 2 layers with a final
norm, an nn.Transformer (2 + 2 layers), or a small translation model around
an nn.Transformer that is decoded greedily. The parameters are drawn anew
(PyTorch starts biases at 0, norms at 1 and the layers of a stack equal:
other values show where each part lands), the state_dict is written (float32)
to transformer_ref.<case>.safetensors beside OUT for attnvae's
av_model_load, and the module runs in float64 without dropout. The modules
stay in training mode: with dropout 0 that is the same maths, and it keeps
PyTorch 1.13 off its fused inference path (and nested tensors).
"""
import itertools
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in tests/
from pyref import torch, F, nn, D, read_cases, write_arrays, save_safetensors, causal_mask  # noqa: E402

ENCODER, DECODER, TRANSFORMER, SEQ2SEQ = range(4)


class Seq2Seq(nn.Module):
    """token embeddings plus sinusoidal positions -> nn.Transformer -> logits"""

    def __init__(self, vocab, **kw):
        super().__init__()
        self.src_emb = nn.Embedding(vocab, kw["d_model"])
        self.tgt_emb = nn.Embedding(vocab, kw["d_model"])
        self.tf = nn.Transformer(**kw)
        self.out = nn.Linear(kw["d_model"], vocab)


def build(cfg, vocab):
    kind, d, nhead, ff, norm_first, gelu, eps, _ = cfg.tolist()
    kw = dict(d_model=int(d), nhead=int(nhead), dim_feedforward=int(ff), dropout=0.0,
              activation="gelu" if gelu else "relu", layer_norm_eps=eps, batch_first=True,
              norm_first=bool(norm_first))
    if kind == TRANSFORMER:
        return nn.Transformer(num_encoder_layers=2, num_decoder_layers=2, **kw)
    if kind == SEQ2SEQ:
        return Seq2Seq(vocab, num_encoder_layers=2, num_decoder_layers=2, **kw)
    d_model, norm = kw.pop("d_model"), nn.LayerNorm(int(d), eps=eps)
    if kind == ENCODER:
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model, **kw), 2, norm=norm,
                                     enable_nested_tensor=False)
    return nn.TransformerDecoder(nn.TransformerDecoderLayer(d_model, **kw), 2, norm=norm)


def redraw(module):
    """matrices U(±sqrt(3 / fan_in)), biases U(±0.5), norm weights U(0.5, 1.5);
    embeddings keep PyTorch's N(0, 1)"""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "_emb." in name:
                continue
            if p.dim() == 2:
                p.uniform_(-math.sqrt(3.0 / p.shape[1]), math.sqrt(3.0 / p.shape[1]))
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
            else:
                p.uniform_(0.5, 1.5)


def padding(lengths, t):
    """PyTorch's bool key_padding_mask [B, t]: True where a key is ignored"""
    return None if lengths is None else torch.arange(t) >= lengths.unsqueeze(-1)


def positions(t, d, start=0):
    """sinusoidal table [t, d]: sin(p / 10000^(2i/d)) at 2i, cos at 2i + 1"""
    p = torch.arange(start, start + t, dtype=D).unsqueeze(1)
    i = torch.arange(d)
    angle = p / 10000.0 ** ((i - i % 2).to(D) / d)
    return torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))


def float_mask(a, field, causal):
    """the explicit float mask, plus causality as PyTorch 1.13's layers need it: a mask"""
    mask = a.get(field)
    if causal:
        t = a["x"].shape[1]
        mask = causal_mask(t, t) if mask is None else mask + causal_mask(t, t)
    return mask


def layers_case(cs, kind, causal, a, model, out):
    """forward and every gradient of sum(y r)"""
    leaves = {n: a[n].clone().requires_grad_(True) for n in ("x", "memory", "src") if n in a}
    x = leaves["x"]
    tgt_kpm, mem_kpm = padding(a.get("lengths"), x.shape[1]), None
    if "mem_lengths" in a:
        mem_kpm = padding(a["mem_lengths"], a["memory" if kind == DECODER else "src"].shape[1])
    if kind == ENCODER:
        y = model(x, mask=float_mask(a, "mask", causal), src_key_padding_mask=tgt_kpm)
    elif kind == DECODER:
        y = model(x, leaves["memory"], tgt_mask=float_mask(a, "mask", causal), memory_mask=a.get("memory_mask"),
                  tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=mem_kpm)
    else:  # attnvae's av_transformer_forward: a causal target, the source's padding for the memory too
        y = model(leaves["src"], x, tgt_mask=causal_mask(x.shape[1], x.shape[1]), src_key_padding_mask=mem_kpm,
                  tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=mem_kpm)
    (y * a["r"]).sum().backward()
    out[cs + ":y"] = y
    for n, t in leaves.items():
        out["%s:d.%s" % (cs, n)] = t.grad
    for n, p in model.named_parameters():
        out["%s:d.%s.%s" % (cs, cs, n)] = p.grad


def greedy(a, model):
    """Greedy decoding, the whole prefix through the decoder at each step:
    the logits of each step [B, max_len, vocab] and the tokens [B, max_len]"""
    _, max_len, bos, _ = a["decode"].tolist()
    src = a["src_tokens"].long()
    B, S = src.shape
    d = model.out.in_features
    kpm = padding(a["mem_lengths"], S)
    with torch.no_grad():
        memory = model.tf.encoder(model.src_emb(src) + positions(S, d), src_key_padding_mask=kpm)
        ys = torch.full((B, 1), int(bos), dtype=torch.long)
        steps = []
        for t in range(int(max_len)):
            h = model.tf.decoder(model.tgt_emb(ys) + positions(t + 1, d), memory, tgt_mask=causal_mask(t + 1, t + 1),
                                 memory_key_padding_mask=kpm)
            steps.append(model.out(h[:, -1]))
            ys = torch.cat([ys, steps[-1].argmax(-1, keepdim=True)], 1)
    return torch.stack(steps, 1), ys[:, 1:]


def greedy_case(cs, a, first_seed, out):
    """A random model decodes greedily, often repeating one token. eos is the
    last new token of row 0; seeds from first_seed on until row 0 ends after
    4 tokens or more and row 1 at another step, and every step's argmax wins
    by more than 1e-2 (robust against float32 errors). Also the width-1 beam
    score of row 0: its log-probability / length^length_penalty."""
    for seed in itertools.count(first_seed):
        model = new_model(a["cfg"], seed, int(a["decode"][0]))
        logits, tokens = greedy(a, model)
        row0 = tokens[0].tolist()
        eos = max(row0, key=row0.index)
        lengths = [row.index(eos) + 1 if eos in row else len(row) for row in tokens.tolist()]
        top2 = logits.topk(2, -1).values
        gap = min(float(top2[b, t, 0] - top2[b, t, 1]) for b in range(len(lengths)) for t in range(lengths[b]))
        if lengths[0] >= 4 and lengths[1] != lengths[0] and gap > 1e-2:
            break
    logp = logits[0].log_softmax(-1).gather(-1, tokens[0].unsqueeze(-1)).squeeze(-1)[:lengths[0]].sum()
    out[cs + ":logits"], out[cs + ":tokens"], out[cs + ":eos"] = logits, tokens, torch.tensor([eos])
    out[cs + ":lengths"], out[cs + ":gap"] = torch.tensor(lengths), torch.tensor([gap])
    out[cs + ":beam_score"] = (logp / lengths[0] ** float(a["decode"][3])).reshape(1)
    return model


def defaults(out):
    """PyTorch's constructor defaults, for av_transformer_defaults"""
    layer = nn.TransformerEncoderLayer(8, 2)
    out["defaults:values"] = torch.tensor([layer.linear1.out_features, layer.dropout.p, layer.norm1.eps,
                                           float(layer.norm_first), float(layer.activation is F.relu)])


def new_model(cfg, seed, vocab=0):
    """the module with its parameters drawn, in float64 (exactly its float32 values)"""
    torch.manual_seed(seed)
    model = build(cfg, vocab)
    redraw(model)
    return model.to(D).train()


def main():
    out = {}
    out_dir = os.path.dirname(os.path.abspath(sys.argv[2]))
    defaults(out)
    for index, (cs, a) in enumerate(read_cases(sys.argv[1]).items()):
        kind, causal = int(a["cfg"][0]), int(a["cfg"][7])
        if kind == SEQ2SEQ:
            model = greedy_case(cs, a, index, out)
        else:
            model = new_model(a["cfg"], index)
            layers_case(cs, kind, causal, a, model, out)
        save_safetensors(os.path.join(out_dir, "transformer_ref.%s.safetensors" % cs),
                         {"%s.%s" % (cs, n): t for n, t in model.state_dict().items()})
    write_arrays(sys.argv[2], out)


if __name__ == "__main__":
    main()
