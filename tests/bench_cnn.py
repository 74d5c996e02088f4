#!/usr/bin/env python3
"""PyTorch side of tests/bench_cnn.sh: the AttentionNet of
examples/cnn_attention_fashion.c in PyTorch 1.13 (oneDNN convolutions), the
same layers, sizes and step: SGD (momentum 0.9, weight decay 5e-4) on a batch
of B random 1 x 28 x 28 images in training mode. Prints one JSON line with
the images per second of the best round of 5 steps (at least 3 rounds and
5 seconds) and the number of parameters (the C side prints its own).
Usage: bench_cnn.py B threads [attention 1|0]"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class SelfAttention2d(nn.Module):  # SAGAN: softmax over key positions, no 1/sqrt(d), gamma from 0
    def __init__(self, c, reduction=8):
        super().__init__()
        self.query = nn.Conv2d(c, c // reduction, 1)
        self.key = nn.Conv2d(c, c // reduction, 1)
        self.value = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)             # [B, N, d]
        k = self.key(x).flatten(2)                               # [B, d, N]
        attn = torch.softmax(torch.bmm(q, k), dim=-1)            # [B, N, N]
        o = torch.bmm(self.value(x).flatten(2), attn.transpose(1, 2))
        return self.gamma * o.view(B, C, H, W) + x


class SpatialAttention(nn.Module):  # CBAM: max and mean over channels, 7x7 conv, sigmoid
    def __init__(self, kernel=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


class AttentionNet(nn.Module):
    def __init__(self, attention=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = ResBlock(32, 64, 2)
        self.sagan = SelfAttention2d(64) if attention else nn.Identity()
        self.layer2 = ResBlock(64, 128, 2)
        self.spatial = SpatialAttention() if attention else nn.Identity()
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.spatial(self.layer2(self.sagan(self.layer1(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
    B, threads = int(sys.argv[1]), int(sys.argv[2])
    attention = len(sys.argv) < 4 or sys.argv[3] != "0"
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net = AttentionNet(attention).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = torch.rand(B, 1, 28, 28), torch.arange(B) % 10
    steps, best, rounds, start = 5, 1e30, -1, time.perf_counter()
    while rounds < 3 or (time.perf_counter() - start < 5.0 and rounds < 50):  # round -1 warms up
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(net(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if rounds >= 0:
            best = min(best, time.perf_counter() - t0)
        rounds += 1
    print(json.dumps({"impl": "torch", "B": B, "threads": threads, "attention": int(attention),
                      "params": sum(p.numel() for p in net.parameters()),
                      "img_per_s": round(steps * B / best, 1), "mkldnn": torch.backends.mkldnn.is_available()}))


if __name__ == "__main__":
    main()
