"""Toy training throughput of our RWKV-4 (RwkvLM, C WKV kernel) next to GPT-NeoX (NeoXLM).

One process, one thread; each timed step is the zoo's step at config.yaml's sizes: forward +
backward of 8 x 256 text rows plus 32 synthetic rows of 64, gradient clipping and AdamW, on
d_model 128, 2 layers (RWKV: attention width 128, d_ffn 512, ~0.69M parameters; GPT-NeoX: 2
heads, d_mlp 512, ~0.66M). The models alternate step by step so that load from other
processes hits both alike; each round reports the median tokens/s of both and the ratio
RWKV / NeoX (goal >= 0.5). For comparison, the same RWKV step through transformers'
RwkvForCausalLM (its CPU path: a Python loop over positions, autograd through it) and through
our model with the torch WKV code instead of the C kernel (``--fallback``) are timed once per
round.

    python benchmarks/rwkv_train.py [--steps 6] [--rounds 2] [--vocab 1024]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F

from universality.models import registry as models
from universality.models import wkv


def step(model, opt, batches) -> None:
    loss = 0
    for x in batches:
        logits = models.logits_of(model, x)
        loss = loss + F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def timed(model, opt, batches, patch=contextlib.nullcontext) -> float:
    with patch():
        t0 = time.perf_counter()
        step(model, opt, batches)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' RwkvForCausalLM")
    ap.add_argument("--fallback", action="store_true", help="also time the torch WKV code")
    args = ap.parse_args()
    torch.set_num_threads(1)
    vocab = args.vocab
    torch.manual_seed(0)
    rwkv = models.build_model(models.build_config({"arch": "rwkv", "d_model": 128, "n_layers": 2}, vocab, 256, 0))
    neox = models.build_model(models.build_config(
        {"arch": "gpt_neox", "d_model": 128, "n_layers": 2, "n_heads": 2, "rotary_pct": 1.0}, vocab, 256, 0))
    hf = rwkv.to_hf().train()
    fallback = copy.deepcopy(rwkv)
    n_params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("RWKV", rwkv), ("NeoX", neox))}
    print(f"parameters: RWKV {n_params['RWKV']:,}, NeoX {n_params['NeoX']:,}; "
          f"WKV C kernel: {wkv._native() is not None}")
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(1, vocab, (8, 256), generator=g), torch.randint(1, vocab, (32, 64), generator=g)]
    tokens = sum(b.numel() for b in batches)
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (rwkv, neox, hf, fallback)}
    no_kernel = lambda: mock.patch.object(wkv, "uses_kernel", lambda k: False)  # noqa: E731
    for m in (rwkv, neox):
        step(m, opts[id(m)], batches)                   # warm-up (builds the kernel)
    for r in range(args.rounds):
        times = {"RWKV": [], "NeoX": []}
        for _ in range(args.steps):
            for name, m in (("RWKV", rwkv), ("NeoX", neox)):
                times[name].append(timed(m, opts[id(m)], batches))
        rate = {k: tokens / statistics.median(v) for k, v in times.items()}
        line = (f"round {r + 1}: RWKV {rate['RWKV']:,.0f} tok/s, NeoX {rate['NeoX']:,.0f} tok/s, "
                f"ratio RWKV/NeoX {rate['RWKV'] / rate['NeoX']:.3f}")
        if not args.no_hf:
            hf_rate = tokens / timed(hf, opts[id(hf)], batches)
            line += f"; transformers RWKV {hf_rate:,.0f} tok/s (ours/transformers {rate['RWKV'] / hf_rate:.1f}x)"
        if args.fallback:
            fb_rate = tokens / timed(fallback, opts[id(fallback)], batches, no_kernel)
            line += f"; ours with torch WKV {fb_rate:,.0f} tok/s (C kernel gain {rate['RWKV'] / fb_rate:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
