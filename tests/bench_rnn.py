"""PyTorch side of the LSTM benchmark (tests/bench_rnn.sh): one training
step, forward and backward, of nn.LSTM(256, 256, num_layers=2,
batch_first=True) on a batch of 32 sequences of 64 steps, the input needing
a gradient too; the loss is a fixed weighting of every output, as in
tests/bench_rnn.c. Prints the best wall-clock and processor time per step of
--steps steps after one warm-up.

    /usr/bin/python3 tests/bench_rnn.py [--threads T] [--steps N]
"""
import argparse
import ctypes
import time

import torch
from torch import nn

B, T, IN, H, LAYERS = 32, 64, 256, 256, 2


def openblas_core():
    """the kernel OpenBLAS chose, if torch's BLAS is OpenBLAS"""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    lstm = nn.LSTM(IN, H, num_layers=LAYERS, batch_first=True)
    x = torch.randn(B, T, IN, requires_grad=True)
    r = torch.randn(B, T, H)
    best = best_cpu = float("inf")
    for step in range(args.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        lstm.zero_grad()
        x.grad = None
        y, _ = lstm(x)
        (y * r).sum().backward()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if step > 0:
            best, best_cpu = min(best, dt), min(best_cpu, dc)
    print(f"pytorch lstm: {torch.get_num_threads()} threads, OpenBLAS {openblas_core()}, best of {args.steps} steps: "
          f"{best * 1e3:.2f} ms/step, processor {best_cpu * 1e3:.2f} ms/step")
    print(f'summary: {{"ms_per_step": {best * 1e3:.3f}, "cpu_ms_per_step": {best_cpu * 1e3:.3f}}}')


if __name__ == "__main__":
    main()
