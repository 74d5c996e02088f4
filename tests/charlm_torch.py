"""PyTorch anchor of examples/charlm.c: the same model, data, windows and
schedule, for make bench (training tokens per second, validation bits per
byte after the same steps).

    /usr/bin/python3 tests/charlm_torch.py [--text PATH] [--arch transformer|lstm]
        [--steps N] [--batch B] [--context T] [--d-model D] [--layers L]
        [--heads H] [--ff F] [--lr LR] [--warmup W] [--clip C] [--val-frac F]
        [--eval-tokens N] [--seed S] [--threads N] [--save FILE]

Same as charlm: the text (a file, or a directory's plain files in name
order, each split into training bytes and its last --val-frac for
validation), the windows (splitmix64 of seed, step and row), the model
(bytes as tokens; transformer: embedding N(0, 1/d) times sqrt(d) plus
sinusoidal positions, pre-LN nn.TransformerEncoderLayers (ReLU or GELU) each
initialised afresh, a final LayerNorm, the output tied to the embedding;
lstm: nn.LSTM, causal nn.MultiheadAttention over its outputs, nn.Linear of
both), Adam with warm-up and cosine decay to a tenth, gradient clipping,
and the validation windows. Prints a summary: {...} line like charlm's.
--save writes the trained state_dict as safetensors, which charlm --load
reads by name.
"""
import argparse
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F
from torch import nn

MASK64 = (1 << 64) - 1


def window_start(seed, step, batch, row, n_range):
    x = ((seed << 40) + step * batch + row + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return (x ^ (x >> 31)) % n_range


def load_text(path, val_frac):
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith(".") and not n.endswith((".dat", ".u8")))
        files = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    else:
        files = [path]
    train, val = bytearray(), bytearray()
    for f in files:
        with open(f, "rb") as fp:
            data = fp.read()
        n = len(data)
        v = 0 if n < 4 else max(2, int(n * float(torch.tensor(val_frac, dtype=torch.float32))))
        train += data[:n - v]
        val += data[n - v:]
    return bytes(train), bytes(val)


def sinusoidal(T, d):
    pe = torch.zeros(T, d, dtype=torch.float64)
    pos = torch.arange(T, dtype=torch.float64).unsqueeze(1)
    for i in range(d):
        angle = pos[:, 0] / 10000.0 ** ((i - i % 2) / d)
        pe[:, i] = torch.cos(angle) if i % 2 else torch.sin(angle)
    return pe.float()


class Transformer(nn.Module):
    def __init__(self, d, layers, heads, ff, activation, dropout, context):
        super().__init__()
        self.d = d
        self.tok_emb = nn.Embedding(256, d)
        nn.init.normal_(self.tok_emb.weight, std=d ** -0.5)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, activation=activation, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d))
        for l in self.encoder.layers:  # TransformerEncoder copies one layer: draw each afresh, as charlm does
            l.self_attn._reset_parameters()
            l.linear1.reset_parameters()
            l.linear2.reset_parameters()
        self.register_buffer("pe", sinusoidal(context, d), persistent=False)
        self.register_buffer("mask", torch.triu(torch.full((context, context), float("-inf")), 1), persistent=False)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.tok_emb(ids) * math.sqrt(self.d) + self.pe[:T]
        h = self.encoder(x, mask=self.mask[:T, :T])
        return F.linear(h, self.tok_emb.weight)


class LSTMAttention(nn.Module):
    def __init__(self, d, layers, heads, dropout, context):
        super().__init__()
        self.tok_emb = nn.Embedding(256, d)
        self.lstm = nn.LSTM(d, d, layers, batch_first=True, dropout=dropout)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.out = nn.Linear(2 * d, 256)
        self.register_buffer("mask", torch.triu(torch.full((context, context), float("-inf")), 1), persistent=False)

    def forward(self, ids):
        T = ids.shape[1]
        h, _ = self.lstm(self.tok_emb(ids))
        a, _ = self.attn(h, h, h, attn_mask=self.mask[:T, :T], need_weights=False)
        return self.out(torch.cat([h, a], 2))


def lr_at(step, warmup, total, lr_max, lr_min):  # av_lr_warmup_cosine
    if step < warmup:
        return lr_max * (step + 1) / warmup
    p = min(1.0, (step - warmup) / (total - warmup)) if total > warmup else 1.0
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


def windows(data, starts, T):
    w = torch.tensor([list(data[s:s + T + 1]) for s in starts], dtype=torch.long)
    return w[:, :-1], w[:, 1:]


def evaluate(model, val, B, T, limit):
    """bits per byte over the first `limit` targets, windows as charlm's"""
    n = len(val) - 1
    if 0 < limit < n:
        n = limit
    nats, start = 0.0, 0
    model.eval()
    with torch.no_grad():
        while start < n:
            length = min(T, n - start)
            starts = []
            while len(starts) < B and start < n and n - start >= length:
                starts.append(start)
                start += length
            x, y = windows(val, starts, length)
            nats += F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1), reduction="sum").item()
    model.train()
    return nats / n / math.log(2)


def save_safetensors(path, model, cfg):
    tensors = dict(model.state_dict())
    tensors["config"] = torch.tensor(cfg, dtype=torch.float32)
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default="/usr/share/games/fortunes")
    ap.add_argument("--arch", default="transformer", choices=["transformer", "lstm"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=512)
    ap.add_argument("--activation", default="relu", choices=["relu", "gelu"])
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--val-frac", type=float, default=0.1)
    ap.add_argument("--eval-tokens", type=int, default=0, help="validation bytes to score (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, val = load_text(a.text, a.val_frac)
    T = min(a.context, len(train) - 1)
    if a.arch == "transformer":
        model = Transformer(a.d_model, a.layers, a.heads, a.ff, a.activation, a.dropout, T)
    else:
        model = LSTMAttention(a.d_model, a.layers, a.heads, a.dropout, T)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    print("charlm_torch: %s, %d parameters, %d training and %d validation bytes, torch %s, %d threads"
          % (a.arch, sum(p.numel() for p in model.parameters()), len(train), len(val), torch.__version__,
             torch.get_num_threads()), flush=True)
    seconds = cpu_seconds = 0.0
    for step in range(a.steps):
        t0, cpu0 = time.perf_counter(), time.process_time()
        x, y = windows(train, [window_start(a.seed, step, a.batch, b, len(train) - T) for b in range(a.batch)], T)
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if a.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.warmup, a.steps, a.lr, a.lr / 10)
        opt.step()
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - cpu0
        if (step + 1) % 500 == 0 or step + 1 == a.steps:
            print("step %6d  train bpc %.3f  val bpc %.3f (first 32768 bytes)  %.0f tokens/s"
                  % (step + 1, loss.item() / math.log(2), evaluate(model, val, a.batch, T, 32768),
                     (step + 1) * a.batch * T / seconds), flush=True)
    val_bpc = evaluate(model, val, a.batch, T, a.eval_tokens)
    if a.save:
        cfg = [0 if a.arch == "transformer" else 1, a.d_model, a.layers, a.heads, a.ff, 1 if a.activation == "relu" else 4, T]
        save_safetensors(a.save, model, cfg)
    print("summary: %s" % json.dumps({"arch": a.arch, "val_bpc": round(val_bpc, 4),
                                      "train_tokens_per_s": round(a.steps * a.batch * T / max(seconds, 1e-9)),
                                      "train_tokens_per_cpu_s": round(a.steps * a.batch * T / max(cpu_seconds, 1e-9)),
                                      "steps": a.steps, "threads": a.threads}))


if __name__ == "__main__":
    main()
