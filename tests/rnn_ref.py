#!/usr/bin/env python3
"""PyTorch side of tests/test_rnn_ref.c.

Usage: rnn_ref.py DIR. Makes a model with nn.LSTM and nn.GRU (2 layers,
bidirectional, batch_first) under "enc." and an nn.LSTMCell and nn.GRUCell
under "dec.", and writes its state_dict (float32) to DIR/rnn_weights.safetensors
for attnvae's av_model_load. Then runs the model in float64 on sequences of
different lengths (pack_padded_sequence) from initial states, backpropagates
a weighted sum of every output, and writes the inputs, outputs and gradients
to DIR/rnn_ref.safetensors. Both files are written with struct and json only.
When torch cannot be imported it writes "skip <reason>" to DIR/rnn_ref.skip.
"""
import os
import sys

try:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
except Exception as e:  # missing or broken install: skip, do not fail
    if len(sys.argv) > 1:
        with open(os.path.join(sys.argv[1], "rnn_ref.skip"), "w") as f:
            f.write("skip %s\n" % str(e).replace("\n", " "))
    sys.exit(77)

B, T, I, H, LAYERS = 4, 6, 5, 8, 2
LENGTHS = [6, 3, 5, 1]  # unsorted, with a sequence of one step
CELL_STEPS = 3

sys.dont_write_bytecode = True  # no __pycache__ in tests/
from pyref import save_safetensors  # noqa: E402


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, num_layers=LAYERS, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(I, H, num_layers=LAYERS, bidirectional=True, batch_first=True)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm_cell = nn.LSTMCell(I, H)
        self.gru_cell = nn.GRUCell(I, H)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = Encoder()
        self.dec = Decoder()


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(1234)
    model = Model()
    save_safetensors(os.path.join(out_dir, "rnn_weights.safetensors"), model.state_dict())

    f32 = torch.float32
    x = torch.rand(B, T, I, dtype=f32) * 2 - 1
    h0 = torch.rand(2 * LAYERS, B, H, dtype=f32) - 0.5
    c0 = torch.rand(2 * LAYERS, B, H, dtype=f32) * 2 - 1
    ry = torch.rand(B, T, 2 * H, dtype=f32) * 2 - 1
    rh = torch.rand(2 * LAYERS, B, H, dtype=f32) * 2 - 1
    rc = torch.rand(2 * LAYERS, B, H, dtype=f32) * 2 - 1
    xc = torch.rand(CELL_STEPS, B, I, dtype=f32) * 2 - 1
    ref = {"in.x": x, "in.lengths": torch.tensor(LENGTHS, dtype=f32), "in.h0": h0, "in.c0": c0,
           "in.ry": ry, "in.rh": rh, "in.rc": rc, "in.xc": xc}

    model = model.double()  # the reference runs in float64 from the float32 values
    D = torch.float64
    for kind in ("lstm", "gru"):
        rnn = getattr(model.enc, kind)
        rnn.zero_grad()
        xv = x.to(D).requires_grad_(True)
        hv = h0.to(D).requires_grad_(True)
        cv = c0.to(D).requires_grad_(True)
        packed = pack_padded_sequence(xv, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        if kind == "lstm":
            out, (hn, cn) = rnn(packed, (hv, cv))
        else:
            out, hn = rnn(packed, hv)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        loss = (y * ry.to(D)).sum() + (hn * rh.to(D)).sum()
        if kind == "lstm":
            loss = loss + (cn * rc.to(D)).sum()
        loss.backward()
        ref[kind + ".y"], ref[kind + ".h_n"], ref[kind + ".dx"], ref[kind + ".dh0"] = y, hn, xv.grad, hv.grad
        if kind == "lstm":
            ref["lstm.c_n"], ref["lstm.dc0"] = cn, cv.grad
        for name, p in rnn.named_parameters():
            ref["%s.d.%s" % (kind, name)] = p.grad

    # cells: CELL_STEPS steps from zero states, each step's h weighted by ry's first rows
    for kind in ("lstm_cell", "gru_cell"):
        cell = getattr(model.dec, kind)
        cell.zero_grad()
        xv = xc.to(D).requires_grad_(True)
        h = c = None
        hs = []
        for s in range(CELL_STEPS):
            if kind == "lstm_cell":
                h, c = cell(xv[s], None if h is None else (h, c))
            else:
                h = cell(xv[s], h)
            hs.append(h)
        hs = torch.stack(hs)
        loss = (hs * rh[:CELL_STEPS].to(D)).sum()
        if kind == "lstm_cell":
            loss = loss + (c * rc[0].to(D)).sum()
            ref["lstm_cell.c"] = c
        loss.backward()
        ref[kind + ".h"], ref[kind + ".dx"] = hs, xv.grad
        for name, p in cell.named_parameters():
            ref["%s.d.%s" % (kind, name)] = p.grad

    save_safetensors(os.path.join(out_dir, "rnn_ref.safetensors"), ref)


if __name__ == "__main__":
    main()
