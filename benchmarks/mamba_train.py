"""Training throughput of our MambaLM vs GPT-NeoX vs transformers' Mamba reference path (CPU).

One process, side by side: each timed step is forward + backward + AdamW step on a batch of
random tokens. Our MambaLM and GPT-NeoX steps are interleaved (ours, neox, ours, neox, ...) so
that load from other processes hits both alike; the median step time is reported. The
transformers MambaForCausalLM (same config and weights as ours; without mamba-ssm it runs its
slow per-position reference path) is timed for one step, by default on batch 4 x 256: a full
16 x 256 step takes minutes (measured 166 s with 1 thread). Its step time grows about linearly
with batch but quadratically with length, so only the batch is reduced.

    python benchmarks/mamba_train.py            # defaults: < 2 minutes on 2 CPU cores
    python benchmarks/mamba_train.py --steps 10 --hf-batch 16

Prints tokens/s per model and the ratios ours/NeoX (goal >= 0.5), ours/transformers and ours
with the C scan kernel vs ours with the torch fallback scan ("ours-torchscan").

On a shared, busy machine torch's OpenMP threads spin-wait at every op's barrier; measured on
the 2-core dev box, 2-thread steps then took 4-7x longer (process CPU time ~= wall time) than
1-thread steps, for both models. Compare with ``--threads 1`` or ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=4, help="timed steps per fast model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--hf-steps", type=int, default=1, help="timed steps of the transformers path")
    p.add_argument("--hf-batch", type=int, default=4,
                   help="batch for the transformers reference path (0: skip it); its step time "
                        "grows ~linearly with batch, so tokens/s barely depends on it")
    p.add_argument("--hf-seq", type=int, default=None,
                   help="sequence length for the transformers path (default: --seq). Its "
                        "backward grows ~quadratically with length: keep the benchmark's length")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--scan-workers", type=int, default=None,
                   help="threads for our selective scan (default: universality.models.scan.SCAN_WORKERS)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def mamba_config(vocab: int):
    from transformers import MambaConfig

    return MambaConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=8, state_size=16,
                       expand=2, conv_kernel=4)


def neox_model(vocab: int, seq: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=512,
                        max_position_embeddings=max(seq, 2048))
    return GPTNeoXForCausalLM(cfg)


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


class Trainer:
    """One model + AdamW; ``step()`` runs forward + backward + optimizer step, returns seconds."""

    def __init__(self, name, model, batch, seq, vocab, seed, context=contextlib.nullcontext):
        self.name, self.model, self.context = name, model.train(), context
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (batch, seq), generator=g)
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def step(self, record: bool = True) -> float:
        t = time.perf_counter()
        c = time.process_time()
        with self.context():
            out = self.model(self.ids)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), self.ids[:, 1:].flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        dt = time.perf_counter() - t
        if record:
            self.times.append(dt)
            self.cpu_times.append(time.process_time() - c)
        return dt

    def tokens_per_s(self, best: bool = False) -> float:
        """From the median step time, or from the fastest step (``best``: least disturbed by
        other processes)."""
        return self.ids.numel() / (min(self.times) if best else statistics.median(self.times))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import MambaForCausalLM
    from transformers.utils import logging as hf_logging

    from universality.models import scan
    from universality.models.mamba import MambaLM

    if args.scan_workers:
        scan.SCAN_WORKERS = args.scan_workers

    hf_logging.set_verbosity_error()  # the "falling back to reference implementation" notices
    torch.manual_seed(args.seed)
    cfg = mamba_config(args.vocab)
    ours = MambaLM(cfg)
    neox = neox_model(args.vocab, args.seq)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, scan workers "
          f"{scan.SCAN_WORKERS or torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"batch {args.batch} x {args.seq} tokens, vocab {args.vocab}")
    print(f"params: MambaLM {n_params(ours):,} (d_model 128, 8 layers, d_state 16, expand 2); "
          f"GPT-NeoX {n_params(neox):,} (d_model 128, 4 layers, 4 heads, d_mlp 512)")

    print(f"C scan kernel: {'built' if scan._native() is not None else 'NOT available'}")
    fast = [Trainer("ours", ours, args.batch, args.seq, args.vocab, args.seed),
            Trainer("neox", neox, args.batch, args.seq, args.vocab, args.seed),
            Trainer("ours-torchscan", copy.deepcopy(ours), args.batch, args.seq, args.vocab,
                    args.seed, scan.torch_fallback)]
    for _ in range(args.warmup):
        for tr in fast:
            tr.step(record=False)
    for _ in range(args.steps):
        for tr in fast:
            tr.step()
    ours_tps, neox_tps = fast[0].tokens_per_s(), fast[1].tokens_per_s()
    for tr in fast:
        print(f"{tr.name:>14}: {tr.tokens_per_s():9.1f} tokens/s  (median step "
              f"{statistics.median(tr.times):.3f} s, min {min(tr.times):.3f} s, "
              f"process CPU {statistics.median(tr.cpu_times):.3f} s, {len(tr.times)} steps)")

    hf_tps = None
    if args.hf_batch > 0 and args.hf_steps > 0:
        hf = MambaForCausalLM(cfg)
        hf.load_state_dict(ours.state_dict())
        hf_seq = args.hf_seq or args.seq
        ref = Trainer("transformers", hf, args.hf_batch, hf_seq, args.vocab, args.seed)
        for _ in range(args.hf_steps):
            ref.step()
        hf_tps = ref.tokens_per_s()
        print(f"{'transformers':>14}: {hf_tps:9.1f} tokens/s  (median step "
              f"{statistics.median(ref.times):.3f} s, batch {args.hf_batch} x {hf_seq}, "
              f"{len(ref.times)} steps; slow reference path)")

    print(f"load average now {os.getloadavg()[0]:.2f} (1 min); with other processes running, "
          f"timings and ratios vary from run to run")
    print(f"ratio ours/NeoX         = {ours_tps / neox_tps:.3f}   (goal >= 0.5; from median steps)")
    print(f"ratio ours/NeoX (best)  = {fast[0].tokens_per_s(True) / fast[1].tokens_per_s(True):.3f}"
          f"   (from the fastest step of each)")
    print(f"ratio ours/ours-torchscan = {ours_tps / fast[2].tokens_per_s():.2f}   (the C scan kernel's gain)")
    if hf_tps:
        print(f"ratio ours/transformers = {ours_tps / hf_tps:.1f}")


if __name__ == "__main__":
    main()
