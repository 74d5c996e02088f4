#!/usr/bin/env python3
"""PyTorch side of tests/bench_attention.sh: causal attention forward +
backward as PyTorch 1.13 users write it (1.13 has no fused attention),
  softmax(q @ k^T / sqrt(d) + mask) @ v,
B = 1, H = 8, D = 64. One configuration per run; prints one JSON line with
milliseconds (best of >= 5 rounds and 1 s), CPU milliseconds of the process
(all threads; the best round) and the peak resident memory this
configuration added.  Usage: bench_attention.py T threads"""
import json, resource, sys, time
import torch

T, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
H, D = 8, 64
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
best = fwd_best = cpu_best = 1e30
reps, start = 0, time.perf_counter()
while reps < 5 or (time.perf_counter() - start < 1.0 and reps < 50):
    q, k, v = (torch.rand(1, H, T, D).mul_(2).sub_(1).requires_grad_() for _ in range(3))
    mask = torch.full((T, T), float("-inf")).triu_(1)
    c0, t0 = time.process_time(), time.perf_counter()
    o = torch.softmax(q @ k.transpose(-2, -1) / D ** 0.5 + mask, dim=-1) @ v
    t1 = time.perf_counter()
    o.sum().backward()
    t2, c2 = time.perf_counter(), time.process_time()
    best, fwd_best, reps = min(best, t2 - t0), min(fwd_best, t1 - t0), reps + 1
    cpu_best = min(cpu_best, c2 - c0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - base
print(json.dumps({"impl": "torch", "T": T, "threads": threads, "ms": round(best * 1e3, 2),
                  "fwd_ms": round(fwd_best * 1e3, 2), "cpu_ms": round(cpu_best * 1e3, 2), "gflops": round(7.0 * T * T * D * H / best * 1e-9, 1),
                  "peak_rss_mb": round(peak, 1)}))
