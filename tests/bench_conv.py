#!/usr/bin/env python3
"""PyTorch side of tests/bench_conv.sh: nn.Conv2d(Cin, Cout, 3, stride, 1)
forward + backward (dx, dW, db) of y.sum(), as PyTorch 1.13 runs it
(oneDNN). One configuration per run; prints one JSON line with the best
round's milliseconds (at least 3 rounds and 1 s).
Usage: bench_conv.py B Cin Cout H stride threads"""
import json, sys, time
import torch

B, Cin, Cout, H, stride, threads = (int(a) for a in sys.argv[1:7])
torch.set_num_threads(threads)
conv = torch.nn.Conv2d(Cin, Cout, 3, stride, 1)
best = fwd_best = 1e30
reps, start = 0, time.perf_counter()
while reps < 3 or (time.perf_counter() - start < 1.0 and reps < 50):
    x = torch.rand(B, Cin, H, H).mul_(2).sub_(1).requires_grad_()
    conv.zero_grad()
    t0 = time.perf_counter()
    y = conv(x)
    t1 = time.perf_counter()
    y.sum().backward()
    t2 = time.perf_counter()
    best, fwd_best, reps = min(best, t2 - t0), min(fwd_best, t1 - t0), reps + 1
Ho = (H - 1) // stride + 1
print(json.dumps({"impl": "torch", "B": B, "Cin": Cin, "Cout": Cout, "H": H, "stride": stride, "threads": threads,
                  "ms": round(best * 1e3, 2), "fwd_ms": round(fwd_best * 1e3, 2),
                  "gflops": round(6.0 * B * Cout * Cin * 9 * Ho * Ho / best * 1e-9, 1),
                  "mkldnn": torch.backends.mkldnn.is_available()}))
