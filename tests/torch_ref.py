#!/usr/bin/env python3
"""PyTorch side of tests/test_torch_ref.c.

Usage: torch_ref.py IN OUT. IN holds named arrays written by the C program
("name ndim d0 .. dk" on one line, the values on the next); this script
computes the same quantities with PyTorch in float64 and writes them to OUT
in the same format. When torch cannot be imported it writes "skip <reason>"
to OUT and exits 77; the C program then reports the test as skipped.
"""
import sys

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # missing or broken install: skip, do not fail
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write("skip %s\n" % str(e).replace("\n", " "))
    sys.exit(77)

D = torch.float64


def read_arrays(path):
    arrays = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for i in range(0, len(lines) - 1, 2):
        head = lines[i].split()
        name, ndim = head[0], int(head[1])
        shape = [int(s) for s in head[2:2 + ndim]]
        vals = [float(v) for v in lines[i + 1].split()]
        arrays[name] = torch.tensor(vals, dtype=D).reshape(shape)
    return arrays


def main():
    a = read_arrays(sys.argv[1])
    out = {}

    def leaf(name):
        return a[name].clone().requires_grad_(True)

    # MLP + softmax cross-entropy (mean and sum)
    for red in ("mean", "sum"):
        x, w1, b1, w2, b2 = (leaf(n) for n in ("mlp.x", "mlp.w1", "mlp.b1", "mlp.w2", "mlp.b2"))
        labels = a["mlp.labels"].long()
        h = F.gelu(F.linear(x, w1, b1))
        loss = F.cross_entropy(F.linear(h, w2, b2), labels, reduction=red)
        loss.backward()
        p = "mlp_%s." % red
        out[p + "loss"] = loss.detach()
        for n, t in (("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            out[p + "d" + n] = t.grad

    # layer norm with affine parameters
    x, g, b = leaf("ln.x"), leaf("ln.g"), leaf("ln.b")
    y = F.layer_norm(x, (x.shape[-1],), g, b, eps=1e-5)
    (y * a["ln.r"]).sum().backward()
    out["ln.y"], out["ln.dx"], out["ln.dg"], out["ln.db"] = y.detach(), x.grad, g.grad, b.grad

    # gelu (exact erf form, PyTorch's default)
    x = leaf("gelu.x")
    y = F.gelu(x)
    (y * a["gelu.r"]).sum().backward()
    out["gelu.y"], out["gelu.dx"] = y.detach(), x.grad

    # softmax and log_softmax over the last axis
    for kind, fn in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
        x = leaf("sm.x")
        y = fn(x, dim=-1)
        (y * a["sm.r"]).sum().backward()
        out[kind + ".y"], out[kind + ".dx"] = y.detach(), x.grad

    # BCE with logits, both reductions, gradients for logits and target
    for red in ("mean", "sum"):
        x, t = leaf("bce.x"), leaf("bce.t")
        loss = F.binary_cross_entropy_with_logits(x, t, reduction=red)
        loss.backward()
        out["bce_%s.loss" % red], out["bce_%s.dx" % red], out["bce_%s.dt" % red] = loss.detach(), x.grad, t.grad

    # MSE
    p_, t_ = leaf("mse.p"), leaf("mse.t")
    loss = F.mse_loss(p_, t_)
    loss.backward()
    out["mse.loss"], out["mse.dp"], out["mse.dt"] = loss.detach(), p_.grad, t_.grad

    # attention: softmax(q kᵀ / sqrt(d)) v, batched
    q, k, v = leaf("att.q"), leaf("att.k"), leaf("att.v")
    att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    y = att @ v
    (y * a["att.r"]).sum().backward()
    out["att.y"], out["att.dq"], out["att.dk"], out["att.dv"] = y.detach(), q.grad, k.grad, v.grad

    # optimizers: three steps from p0 with the given gradients
    grads = a["opt.g"]
    for name, make in (
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01)),
        ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01)),
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ):
        p = a["opt.p0"].clone().requires_grad_(True)
        opt = make([p])
        for s in range(grads.shape[0]):
            p.grad = grads[s].clone()
            opt.step()
        out["opt_%s.p" % name] = p.detach()

    # two parameter groups: the bias with half the lr and no weight decay;
    # the values after five steps and the optimizer state
    gw, gb = a["grp.gw"], a["grp.gb"]
    for name, make in (
        ("sgd", lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=0.01)),
        ("adam", lambda groups: torch.optim.Adam(groups, lr=0.01, weight_decay=0.01)),
        ("adamw", lambda groups: torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1)),
    ):
        w = a["grp.w0"].clone().requires_grad_(True)
        b = a["grp.b0"].clone().requires_grad_(True)
        opt = make([{"params": [w]}, {"params": [b], "weight_decay": 0.0}])
        opt.param_groups[1]["lr"] *= 0.5
        for s in range(gw.shape[0]):
            w.grad = gw[s].reshape(2, 3).clone()
            b.grad = gb[s].clone()
            opt.step()
        p = "grp_%s." % name
        out[p + "w"], out[p + "b"] = w.detach(), b.detach()
        for key, state in (("m", "momentum_buffer" if name == "sgd" else "exp_avg"), ("v", "exp_avg_sq")):
            if state in opt.state[w]:
                out[p + key + "w"], out[p + key + "b"] = opt.state[w][state], opt.state[b][state]

    with open(sys.argv[2], "w") as f:
        for name, t in out.items():
            t = t.detach().to(D).reshape(-1) if t.dim() else t.detach().to(D).reshape(1)
            f.write("%s 1 %d\n" % (name, t.numel()))
            f.write(" ".join("%.17g" % v for v in t.tolist()) + "\n")


if __name__ == "__main__":
    main()
