#!/usr/bin/env python3
"""PyTorch side of tests/test_conv_ref.c, in float64.

Usage: conv_ref.py IN OUT. IN holds named arrays from the C program
("case:field ndim d0 .. dk" on one line, the values on the next); field
"cfg" says what the case is (its first value):
  1 conv   nn.Conv2d / nn.ConvTranspose2d
  2 bn     nn.BatchNorm2d (4-d input) or nn.BatchNorm1d (2-d): training
           steps, then eval
  3 gn     nn.GroupNorm
  4 sn     torch.nn.utils.spectral_norm of a Conv2d or ConvTranspose2d:
           training steps, then eval
  5 pool   max_pool2d, avg_pool2d, adaptive_avg_pool2d, interpolate
  6 sagan  SAGAN self-attention (the common PyTorch implementation, with
           attnvae's names), spectral_norm on its convolutions if cfg[3]:
           then training steps and eval; also its weights [B, N, N]
  7 res    a ResNet basic block, projection shortcut when the shape
           changes: batch norm training steps, then eval
  8 net    the AttentionNet classifier: training steps, then eval
  9 se     squeeze-and-excitation as torchvision.ops.SqueezeExcitation
Modules start from torch.manual_seed and are randomised where PyTorch
starts from constants (biases, norms' affine parameters, running
statistics), then their state_dict (float32, num_batches_tracked too) goes
to conv_ref.<case>.safetensors beside OUT, named "<case>.<key>", for
attnvae's av_model_load. Each step's loss is sum(y * r). Results go to OUT
in IN's format. When torch cannot be imported the script writes
"skip <reason>" to OUT and exits 77.
"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in tests/
from pyref import torch, F, nn, D, read_cases, write_arrays, save_safetensors  # noqa: E402


class SelfAttn2d(nn.Module):
    """SAGAN self-attention: gamma * softmax(q^T k) v + x over the H W positions"""

    def __init__(self, c, reduction):
        super().__init__()
        self.query = nn.Conv2d(c, c // reduction, 1)
        self.key = nn.Conv2d(c, c // reduction, 1)
        self.value = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query(x).view(b, -1, h * w).permute(0, 2, 1)
        k = self.key(x).view(b, -1, h * w)
        self.attn = torch.softmax(torch.bmm(q, k), dim=-1)  # [b, query position, key position]
        v = self.value(x).view(b, -1, h * w)
        return self.gamma * torch.bmm(v, self.attn.permute(0, 2, 1)).view(b, c, h, w) + x


class SpatialAttn(nn.Module):
    """CBAM: x * sigmoid(conv([max over channels; mean over channels]))"""

    def __init__(self, k):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(torch.cat([x.max(1, keepdim=True)[0], x.mean(1, keepdim=True)], 1)))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation's names and maths"""

    def __init__(self, c, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class AttentionNet(nn.Module):
    """stem, stages of ResBlocks (the first with stride 2), SAGAN and spatial
    attention after the stages named, global average pooling, fc"""

    def __init__(self, cin, classes, stem, channels, blocks, sagan_stage, spatial_stage, reduction, kernel):
        super().__init__()
        self.stem = ConvBlock(cin, stem)
        self.sagan_stage, self.spatial_stage, c = sagan_stage, spatial_stage, stem
        for s, (ch, nb) in enumerate(zip(channels, blocks)):
            setattr(self, "layer%d" % (s + 1), nn.Sequential(*[ResBlock(c if i == 0 else ch, ch, 2 if i == 0 else 1)
                                                               for i in range(nb)]))
            c = ch
            if s == sagan_stage:
                self.sagan = SelfAttn2d(c, reduction)
            if s == spatial_stage:
                self.spatial = SpatialAttn(kernel)
        self.fc = nn.Linear(c, classes)
        self.stages = len(channels)

    def forward(self, x):
        x = self.stem(x)
        for s in range(self.stages):
            x = getattr(self, "layer%d" % (s + 1))(x)
            if s == self.sagan_stage:
                x = self.sagan(x)
            if s == self.spatial_stage:
                x = self.spatial(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise_all(mod):
    """randomise on every submodule; SAGAN's gamma away from its 0"""
    for sub in mod.modules():
        randomise(sub)
        if isinstance(sub, SelfAttn2d):
            with torch.no_grad():
                sub.gamma.uniform_(0.5, 1.0)


def randomise(mod):
    """biases and norm parameters away from PyTorch's constant starts"""
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith("bias") or isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.num_batches_tracked.fill_(5)


def save_module(cs, mod, out_dir):
    save_safetensors(os.path.join(out_dir, "conv_ref.%s.safetensors" % cs),
                     {"%s.%s" % (cs, k): t for k, t in mod.state_dict().items()})


def step(cs, tag, mod, x, r, out):
    """y = mod(x), loss sum(y r): y and the gradients of x and every parameter"""
    mod.zero_grad()
    x = x.clone().requires_grad_(True)
    y = mod(x)
    (y * r).sum().backward()
    out["%s:%s.y" % (cs, tag)] = y
    if isinstance(mod, SelfAttn2d):
        out["%s:%s.attn" % (cs, tag)] = mod.attn
    out["%s:%s.d.x" % (cs, tag)] = x.grad
    for n, p in mod.named_parameters():
        out["%s:%s.d.%s" % (cs, tag, n)] = p.grad.clone()


def conv_module(cfg):
    t, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, oph, opw, groups, bias = cfg
    if t:
        return nn.ConvTranspose2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), (oph, opw), groups, bool(bias), (dh, dw))
    return nn.Conv2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, bool(bias))


def run_case(cs, a, out, out_dir, seed):
    cfg = [int(v) for v in a["cfg"].tolist()]
    kind = cfg[0]
    torch.manual_seed(seed)
    if kind == 5:
        op, k, s, p, oh, ow = cfg[1:]
        fns = [lambda x: F.max_pool2d(x, k, s, p), lambda x: F.avg_pool2d(x, k, s, p),
               lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=False),
               lambda x: F.adaptive_avg_pool2d(x, (oh, ow)),
               lambda x: F.interpolate(x, size=(oh, ow), mode="nearest"),
               lambda x: F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)]
        x = a["x"].clone().requires_grad_(True)
        y = fns[op](x)
        (y * a["r"]).sum().backward()
        out[cs + ":y"], out[cs + ":d.x"] = y, x.grad
        return
    if kind == 1:
        mod = conv_module(cfg[1:])
    elif kind == 6:
        mod = SelfAttn2d(cfg[1], cfg[2])
        if cfg[3]:
            for name in ("query", "key", "value"):
                setattr(mod, name, nn.utils.spectral_norm(getattr(mod, name)))
    elif kind == 7:
        mod = ResBlock(*cfg[1:4])
    elif kind == 8:
        cin, classes, stem, n = cfg[1:5]
        channels, blocks = cfg[5:5 + n], cfg[5 + n:5 + 2 * n]
        mod = AttentionNet(cin, classes, stem, channels, blocks, *cfg[5 + 2 * n:9 + 2 * n])
    elif kind == 9:
        mod = SqueezeExcitation(cfg[1], cfg[2])
    elif kind == 2:
        mod = nn.BatchNorm2d(cfg[1]) if cfg[2] == 4 else nn.BatchNorm1d(cfg[1])
    elif kind == 3:
        mod = nn.GroupNorm(cfg[1], cfg[2])
    else:
        t, cin, cout, k, s, p = cfg[1:7]
        inner = nn.ConvTranspose2d(cin, cout, k, s, p) if t else nn.Conv2d(cin, cout, k, s, p)
        mod = nn.utils.spectral_norm(inner)
    randomise_all(mod)
    save_module(cs, mod, out_dir)
    mod = mod.to(D)
    steps = sum(1 for f in a if f.startswith("x") and f[1:].isdigit())
    if steps == 0:
        step(cs, "s0", mod, a["x"], a["r"], out)
        return
    mod.train()
    for i in range(steps):
        step(cs, "s%d" % i, mod, a["x%d" % i], a["r%d" % i], out)
    for name, b in mod.named_buffers():
        out["%s:after.%s" % (cs, name)] = b.clone()
    mod.eval()
    step(cs, "eval", mod, a["x_eval"], a["r_eval"], out)


def main():
    out = {}
    out_dir = os.path.dirname(os.path.abspath(sys.argv[2]))
    for seed, (cs, a) in enumerate(read_cases(sys.argv[1]).items()):
        run_case(cs, a, out, out_dir, seed)
    write_arrays(sys.argv[2], out)


if __name__ == "__main__":
    main()
