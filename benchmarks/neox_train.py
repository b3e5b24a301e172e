"""Toy training throughput of the one GPT-NeoX forward (NeoXLM) vs transformers' GPTNeoXForCausalLM.

One process, one thread; each timed step is the zoo's step: forward + backward of 8 x 256 text
rows plus 32 synthetic rows of 64, gradient clipping and AdamW. The two models (same weights)
alternate step by step so that load from other processes hits both alike; two rounds, each
reporting the median tokens/s of both.

    python benchmarks/neox_train.py [--steps 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import GPTNeoXForCausalLM

from universality.models import registry as models


def step(model, opt, batches) -> None:
    loss = 0
    for x in batches:
        logits = models.logits_of(model, x)
        loss = loss + F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vocab = 4096
    spec = {"arch": "gpt_neox", "d_model": 128, "n_layers": 2, "n_heads": 2, "rotary_pct": 1.0}
    config = models.build_config(spec, vocab, 256, 0)
    torch.manual_seed(0)
    ours = models.build_model(config)
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(config).train()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(1, vocab, (8, 256), generator=g), torch.randint(1, vocab, (32, 64), generator=g)]
    tokens = sum(b.numel() for b in batches)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ours, hf)}
    for m in (ours, hf):
        step(m, opts[m], batches)                       # warm-up
    for r in range(args.rounds):
        times = {"NeoXLM": [], "transformers": []}
        for _ in range(args.steps):
            for name, m in (("NeoXLM", ours), ("transformers", hf)):
                t0 = time.perf_counter()
                step(m, opts[m], batches)
                times[name].append(time.perf_counter() - t0)
        rate = {k: tokens / statistics.median(v) for k, v in times.items()}
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in rate.items())
              + f", ratio {rate['NeoXLM'] / rate['transformers']:.3f}")
    same = all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), hf.state_dict().values()))
    print(f"weights bitwise equal after {1 + args.rounds * args.steps} steps: {same}")


if __name__ == "__main__":
    main()
