"""PyTorch reference for the VAE benchmark and the 1-nat goal.

Trains the canonical PyTorch examples/vae model (784-400-20-400-784, ReLU,
Bernoulli decoder, Adam 1e-3, batch 128) on Fashion-MNIST read from the
uncompressed IDX files, and prints training images per second and the test
-ELBO (summed BCE + KL per image), like build/vae_fashion does.

    /usr/bin/python3 tests/bench_vae.py DATA_DIR [--epochs N] [--threads T] [--batches B]
"""
import argparse
import ctypes
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def load_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def loss_function(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def openblas():
    """The OpenBLAS library under torch's matrix products, or None."""
    libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if "blas" in line})
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


def set_threads(n):
    """torch.set_num_threads leaves OpenBLAS's own thread pool alone (2
    threads on 2 cores), so a 1-thread run would multiply matrices on 2:
    set both."""
    torch.set_num_threads(n)
    lib = openblas()
    if lib:
        lib.openblas_set_num_threads(n)


def blas_core():
    """The kernel OpenBLAS chose, or "?"."""
    lib = openblas()
    return lib.openblas_get_corename().decode() if lib else "?"


def blas_threads():
    lib = openblas()
    return lib.openblas_get_num_threads() if lib else 0


def cpu_capability():
    """The instruction set of ATen's own kernels (ATEN_CPU_CAPABILITY)."""
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage:" in line:
            return line.split(":")[1].strip()
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=0, help="stop each epoch after this many batches")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    train = torch.from_numpy(load_idx(f"{args.data}/train-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255)
    test = torch.from_numpy(load_idx(f"{args.data}/t10k-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = 128
    total_time, total_images = 0.0, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(train.shape[0])
        t0, seen, train_loss = time.perf_counter(), 0, 0.0
        for i, start in enumerate(range(0, train.shape[0], batch)):
            if args.batches and i >= args.batches:
                break
            x = train[perm[start:start + batch]]
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = loss_function(recon, x, mu, logvar)
            loss.backward()
            opt.step()
            train_loss += loss.item()
            seen += x.shape[0]
        dt = time.perf_counter() - t0
        total_time += dt
        total_images += seen
        model.eval()
        with torch.no_grad():
            test_loss = 0.0
            for s in range(0, test.shape[0], 500):
                x = test[s:s + 500]
                recon, mu, logvar = model(x)
                test_loss += loss_function(recon, x, mu, logvar).item()
        print(f"epoch {epoch:2d}  train -elbo {train_loss / seen:.2f}  test -elbo {test_loss / test.shape[0]:.2f} "
              f"nats/image  {seen / dt:.0f} img/s", flush=True)
    print(f'summary: {{"img_per_s": {total_images / total_time:.0f}, "test_neg_elbo": {test_loss / test.shape[0]:.3f}, '
          f'"threads": {args.threads}, "blas_threads": {blas_threads()}, "blas_core": "{blas_core()}", '
          f'"cpu_capability": "{cpu_capability()}"}}')


if __name__ == "__main__":
    main()
