"""Selective scan of one Mamba layer: the C kernel vs the torch scan path (CPU, float32).

    python benchmarks/scan_kernel.py                    # shapes (8, 256, 256, 16), (64, 32, 256, 16)
    python benchmarks/scan_kernel.py --shape 16 256 256 16 --repeat 9

One process, one scan worker thread, interleaved (C, torch, C, torch, ...) so that load from
other processes hits both alike. Times forward and forward + backward of
``universality.models.scan.selective_scan`` on (batch, pos, d_inner, d_state) inputs; prints the
best time of each and the ratio torch / C (the best of all rounds and the range over the rounds'
pairs).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from universality.models import scan


def inputs(batch, pos, d, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, pos, d, generator=g)
    delta = F.softplus(torch.randn(batch, pos, d, generator=g) - 1)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)  # Mamba's S4D-real init
    B, C = torch.randn(batch, pos, n, generator=g), torch.randn(batch, pos, n, generator=g)
    D = torch.randn(d, generator=g)
    xs = [x.requires_grad_() for x in (u, delta, A, B, C, D)]
    return xs, torch.randn(batch, pos, d, generator=g)


def timed(xs, gy, backward: bool) -> float:
    t = time.perf_counter()
    if backward:
        y = scan.selective_scan(*xs, workers=1)
        torch.autograd.grad(y, xs, gy)
    else:
        with torch.no_grad():
            scan.selective_scan(*xs, workers=1)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=4, action="append", metavar=("BATCH", "POS", "D", "N"))
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if scan._native() is None:
        raise SystemExit("the C kernel did not build")
    for shape in args.shape or [(8, 256, 256, 16), (64, 32, 256, 16)]:
        xs, gy = inputs(*shape)
        for backward in (False, True):
            times = {"C": [], "torch": []}
            for _ in range(args.repeat + 1):  # the first round warms up and is dropped
                for name in times:
                    with scan.torch_fallback() if name == "torch" else contextlib.nullcontext():
                        times[name].append(timed(xs, gy, backward))
            c, tt = times["C"][1:], times["torch"][1:]
            pairs = sorted(b / a for a, b in zip(c, tt))
            print(f"{tuple(shape)} {'fwd+bwd' if backward else 'fwd    '}: C {min(c) * 1e3:7.1f} ms, "
                  f"torch {min(tt) * 1e3:7.1f} ms, torch/C {min(tt) / min(c):.2f} "
                  f"(pairs {pairs[0]:.2f}-{pairs[-1]:.2f})")


if __name__ == "__main__":
    main()
