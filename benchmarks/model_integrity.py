"""Cost of checking a model folder on load, for a Pythia-160m-sized GPT-NeoX (random weights).

    python benchmarks/model_integrity.py [--out /tmp/model160m]

Prints the times of: sealing the folder, the full check (every file hashed), the sampled check
(SAMPLE_FILES blocks of BLOCK_BYTES, what stores above FULL_VERIFY_BYTES get), and load_model
(check included), with the checks as ratios of the load. Not a test: numbers depend on the
machine and its load.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from universality.core import integrity
from universality.models import registry

PYTHIA_160M = {"arch": "gpt_neox", "d_model": 768, "n_layers": 12, "n_heads": 12, "train_tokens": 0,
               "rotary_pct": 0.25}


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/model160m")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    model = registry.build_model(registry.build_config(PYTHIA_160M, 50304, 2048, 0))
    registry.arch_of(model).save(model, out)  # unsealed: sealing is timed below
    del model
    size = sum(p.stat().st_size for p in out.iterdir())
    seal = timed(lambda: integrity.seal(out), 1)
    full = timed(lambda: integrity.verify(out, full_bytes=1 << 62))
    sampled = timed(lambda: integrity.verify(out, full_bytes=0))
    load = timed(lambda: registry.load_model(out), 2)
    print(f"folder {size / 1e6:.0f} MB (FULL_VERIFY_BYTES {integrity.FULL_VERIFY_BYTES >> 20} MiB, "
          f"blocks of {integrity.BLOCK_BYTES >> 20} MiB, {integrity.SAMPLE_FILES} sampled)")
    print(f"seal {seal:.2f} s, full check {full:.2f} s, sampled check {sampled:.2f} s, "
          f"load_model (default check) {load:.2f} s")
    print(f"full check / load = {full / load:.2f}, sampled check / load = {sampled / load:.2f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
