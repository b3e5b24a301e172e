"""How fast a toy Mamba learns to copy: synthetic rows only, second-copy loss by |R| over steps.

The measurement behind the README's Mamba warm-up table (and the choice of
``models: mamba-s0: training:`` in config.yaml). Each step trains on ``--rows`` synthetic rows
``[BOS] R R ...`` of ``--len`` tokens (periods log-uniform in [8, (len - 1) // 2 + 1]); every
``--every`` steps it prints the mean loss on the second copy of ``[BOS] R R`` for |R| = 8, 16,
32, 64 (chance: ln(vocab)).

    python benchmarks/mamba_induction.py --steps 1000 --len 32 --rows 64          # README table
    python benchmarks/mamba_induction.py --steps 600 --len 64 --rows 32           # NeoX recipe
    python benchmarks/mamba_induction.py --layers 8 --len 64 --rows 32            # presets/study.yaml
    python benchmarks/mamba_induction.py --arch gpt_neox --layers 4 --steps 400 --len 64 --rows 32

``--arch`` runs the same measurement for another architecture of the registry.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from universality.models import registry as models  # noqa: E402
from universality.zoo import train as zoo  # noqa: E402
from train_speed import TOY_SPECS  # noqa: E402  (benchmarks/, the script's own folder)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--len", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--arch", default="mamba", choices=sorted(TOY_SPECS),
                   help="the default zoo's shape of this architecture, with --layers (and --d-state)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = {**TOY_SPECS[args.arch], "arch": args.arch, "seed": 0, "n_layers": args.layers}
    if args.arch == "mamba":
        spec["d_state"] = args.d_state
    model = models.build_model(models.build_config(spec, args.vocab, 256, 0)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    t0 = time.perf_counter()
    print("step  train-copy-loss  second-copy loss by |R|  seconds")
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 30)
        ids, labels = zoo.synthetic_repeats(rng, args.rows, args.len, args.vocab, 0)
        loss = zoo.lm_loss(models.logits_of(model, torch.from_numpy(ids)), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps - 1:
            model.eval()
            by_len = {n: round(zoo.induction_losses(model, args.vocab, 0, length=n)["second_copy"], 2)
                      for n in (8, 16, 32, 64)}
            model.train()
            print(step, round(loss.item(), 3), by_len, round(time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
