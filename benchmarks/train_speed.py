"""Toy training throughput per architecture, side by side in one process, printed as ratios.

Each architecture of the registry is built as a toy model of the default zoo (d_model 128;
GPT-NeoX and RWKV 2 layers, Mamba 4 layers, as in config.yaml) and timed on the steps the
zoo's recipe takes (universality.zoo.train): forward + backward + AdamW step on a text batch of
``--batch`` x ``--seq`` random tokens plus ``--synth-rows`` x ``--synth-len`` synthetic rows.
Rounds alternate between the architectures (neox, mamba, rwkv, neox, mamba, ...), so that load
from other processes hits all alike; the median step time of each is reported, as tokens/s, CPU
seconds per step, and ratios against GPT-NeoX. On a shared 2-core machine wall times are noisy:
the CPU-s column is the steadier one (process CPU time, all threads).

    python benchmarks/train_speed.py                    # ~1-2 minutes, 1 thread (as the rules)
    python benchmarks/train_speed.py --rounds 10 --arch gpt_neox --arch mamba
    python benchmarks/train_speed.py --preset presets/study.yaml   # that zoo's shapes

An architecture that cannot be built or trained here is reported and skipped, not faked.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from universality.models import registry as models  # noqa: E402

#: The default zoo's shapes (config.yaml), by architecture.
TOY_SPECS = {
    "gpt_neox": {"d_model": 128, "n_layers": 2, "n_heads": 4},
    "mamba": {"d_model": 128, "n_layers": 4, "d_state": 16, "expand": 2, "d_conv": 4},
    "rwkv": {"d_model": 128, "n_layers": 2},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", action="append", help="architectures (default: every one in TOY_SPECS)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per architecture")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="text windows per step (config.yaml training)")
    p.add_argument("--seq", type=int, default=256, help="tokens per text window (tokenizer.max_len)")
    p.add_argument("--synth-rows", type=int, default=32, help="synthetic rows per step (induction_rows)")
    p.add_argument("--synth-len", type=int, default=64, help="tokens per synthetic row (induction_len)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the rules run 1)")
    p.add_argument("--preset", help="a config file: time its zoo's shapes (the first trained model "
                   "of each architecture) instead of config.yaml's")
    return p.parse_args(argv)


SHAPE_KEYS = ("d_model", "n_layers", "n_heads", "d_state", "expand", "d_conv", "d_mlp")


def preset_specs(path) -> dict:
    """{arch: shape} of the first trained model of each architecture in a config file (checked
    by the pipeline's own validator, so a bad file names its key)."""
    import yaml

    from universality.workflow.config import validate

    specs = {}
    for m in validate(yaml.safe_load(Path(path).read_text()))["models"].values():
        if m["source"] == "train" and m["train_tokens"] > 0:
            specs.setdefault(m["arch"], {k: m[k] for k in SHAPE_KEYS if m.get(k) is not None})
    if not specs:
        raise SystemExit(f"{path}: models: no trained model to time")
    return specs


class Stepper:
    """One toy model + AdamW; ``step()`` runs one recipe step and returns (wall s, CPU s)."""

    def __init__(self, arch: str, args):
        torch.manual_seed(0)
        spec = {"arch": arch, "seed": 0, "train_tokens": 1, **args.specs[arch]}
        self.model = models.build_model(models.build_config(spec, args.vocab, args.seq, 0)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        self.batches = [torch.randint(1, args.vocab, (args.batch, args.seq), generator=g)]
        if args.synth_rows:
            self.batches.append(torch.randint(1, args.vocab, (args.synth_rows, args.synth_len), generator=g))
        self.tokens = sum(b.numel() for b in self.batches)
        self.vocab = args.vocab

    def step(self) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        loss = 0.0
        for ids in self.batches:
            logits = models.logits_of(self.model, ids)
            loss = loss + F.cross_entropy(logits[:, :-1].reshape(-1, self.vocab), ids[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> None:
    args = parse_args(argv)
    args.specs = preset_specs(args.preset) if args.preset else TOY_SPECS
    torch.set_num_threads(args.threads)
    steppers = {}
    for arch in args.arch or list(args.specs):
        try:
            steppers[arch] = Stepper(arch, args)
            for _ in range(args.warmup):
                steppers[arch].step()
        except Exception as exc:  # reported, not hidden: the table says which one is missing
            print(f"{arch}: skipped ({type(exc).__name__}: {exc})")
    times = {a: [] for a in steppers}
    for _ in range(args.rounds):
        for arch, s in steppers.items():  # alternating rounds
            times[arch].append(s.step())
    print(f"threads {args.threads}; step = {args.batch} x {args.seq} text + {args.synth_rows} x "
          f"{args.synth_len} synthetic tokens; median of {args.rounds} alternating rounds")
    print(f"{'arch':10s} {'layers':>6s} {'tokens/s':>10s} {'CPU s/step':>10s} {'vs gpt_neox':>12s} {'CPU vs neox':>12s}")
    ref = steppers.get("gpt_neox")
    ref_wall = statistics.median(w for w, _ in times["gpt_neox"]) if ref else None
    ref_cpu = statistics.median(c for _, c in times["gpt_neox"]) if ref else None
    for arch, s in steppers.items():
        wall = statistics.median(w for w, _ in times[arch])
        cpu = statistics.median(c for _, c in times[arch])
        ratio = f"{ref_wall / wall:12.2f}" if ref else f"{'-':>12s}"
        cratio = f"{cpu / ref_cpu:12.2f}" if ref else f"{'-':>12s}"
        print(f"{arch:10s} {args.specs[arch]['n_layers']:6d} {s.tokens / wall:10.0f} {cpu:10.3f} {ratio} {cratio}")
    print("vs gpt_neox: tokens/s ratio (higher is faster); CPU vs neox: CPU s per step ratio (higher is costlier)")


if __name__ == "__main__":
    main()
