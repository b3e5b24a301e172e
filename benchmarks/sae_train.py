"""Benchmark: our SAE trainer vs SAELens' SAETrainer + StandardTrainingSAE on the same activations.

    python benchmarks/sae_train.py                        # D 128 -> 2048, batch 1024, l1 in {1,2,4}
    python benchmarks/sae_train.py --quick                # one l1, 102,400 tokens
    python benchmarks/sae_train.py --batch 4096 --tokens 409600 --threads 2

Data: a synthetic Zarr store made here (float16, 4,096-row chunks, ``segments`` attrs like the
activations stage writes): a mean offset plus a sparse combination of 1,024 random unit
directions in R^D (Zipf-like firing probabilities, ~12 active per token, magnitudes 0.5 + Exp(1))
plus Gaussian noise. The last ``--eval-tokens`` rows are held out for the metrics.

Both trainers see the identical stream: our ShuffleBuffer over the training rows, centred and
scaled to E||x||^2 = D (the same normalisation and seed), same dictionary size, batch, number
of tokens, Adam(0.9, 0.999), constant lr, l1 warm-up over the first 5% of steps and gradient
norm clipping at 1.0. Each keeps its own recipe otherwise: ours is the paper's init (decoder
rows of norm sqrt(D/F), W_enc = W_dec^T, zero biases) and the fused manual-gradient step;
SAELens keeps its defaults (decoder init norm 0.1, b_dec subtracted from the input, autograd).

Timed: the training loop only (ours: ``train_sae``'s loop incl. reading the Zarr store;
SAELens: ``SAETrainer.fit()`` pulling from the same reader): tokens per wall second and per
process CPU second (the robust number when other jobs share the cores), median over the sweep.
Peak memory: growth of the worker's peak RSS (VmHWM, reset after imports) over training plus
the held-out evaluation (``train_sae`` does both).
Quality: our ``evaluate`` on the held-out rows for both (SAELens' weights converted exactly:
``b_enc - b_dec @ W_enc``, then the input normalisation folded in): explained variance, mean L0,
dead fraction. "EV at matched L0" interpolates each trainer's EV linearly in log L0 between its
sweep points and compares at L0 values that both sweeps cover.
Each trainer runs in its own subprocess (so imports and peak RSS do not mix).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------- data
def make_activations(path: Path, n_train: int, n_eval: int, d: int, seed: int = 0,
                     n_true: int = 1024, mean_active: float = 12.0) -> Path:
    from universality.core import store

    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_true, d)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_true + 1) ** 0.7
    p = np.minimum(p / p.sum() * mean_active, 0.5).astype(np.float32)
    mean = (0.5 * rng.standard_normal(d)).astype(np.float32)
    n = n_train + n_eval
    arr = store.create_array(path, (n, d), "float16", chunk_rows=4096,
                             attrs={"segments": {"sae": [0, n_train], "eval": [n_train, n]},
                                    "model": "synthetic", "layer": 0, "site": "resid"})
    writer = store.RowWriter(arr)
    for s in range(0, n, 16384):
        m = min(16384, n - s)
        fire = rng.random((m, n_true), dtype=np.float32) < p
        rows, cols = np.nonzero(fire)
        vals = (0.5 + rng.exponential(1.0, rows.size)).astype(np.float32)
        acts = np.zeros((m, n_true), np.float32)
        acts[rows, cols] = vals
        x = acts @ dirs + mean + 0.05 * rng.standard_normal((m, d), dtype=np.float32)
        writer.append(x)
    writer.close()
    store.seal(path)  # readers refuse a store without an integrity record
    return path


# ------------------------------------------------------------------------------ workers
def _vm(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from universality.core import store
    from universality.sae.model import SAE
    from universality.sae.buffer import ShuffleBuffer, estimate_normalization, split_rows
    from universality.sae.config import SAETrainConfig
    from universality.sae.evaluate import evaluate
    from universality.sae.train import train_sae

    arr = store.open_array(args.data)
    tr, ev, _ = split_rows(arr.shape[0], dict(arr.attrs))
    steps = args.tokens // args.batch
    # one-time runtime set-up (BLAS buffers, Zarr/codec state) before the memory baseline
    torch.mm(torch.ones(args.batch, arr.shape[1]), torch.ones(arr.shape[1], 8 * arr.shape[1]))
    np.asarray(arr[0:4096])
    results = []
    if args.worker == "saelens":
        try:
            from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
            from sae_lens.config import LoggingConfig, SAETrainerConfig
        except ImportError as exc:
            print(json.dumps({"error": f"sae_lens is not importable: {exc}"}))
            return
    d = arr.shape[1]
    for l1 in args.l1s:
        torch.manual_seed(args.seed)
        base = _vm("VmRSS")
        _reset_peak()
        if args.worker == "ours":
            with tempfile.TemporaryDirectory() as tmp:
                # lr_decay 0: constant lr, as the SAELens side below
                cfg = SAETrainConfig(expansion=args.expansion, l1=l1, lr=args.lr, batch_size=args.batch,
                                     train_tokens=args.tokens, checkpoint_every=0, l1_warmup=0.05,
                                     grad_clip=1.0, lr_decay=0.0)
                m = train_sae(args.data, Path(tmp) / "sae", cfg, seed=args.seed, progress=False)
            tok_s = m["training"]["tokens_per_s"]
            tok_cpu_s = (steps * args.batch) / max(m["training"]["loop_cpu_s"], 1e-9)
            peak = _vm("VmHWM") - base
            q = {k: m[k] for k in ("explained_variance", "mean_l0", "dead_fraction", "dense_fraction")}
        else:
            shift, scale = estimate_normalization(arr, tr, "center_scale")
            stream = ShuffleBuffer(arr, tr, 65536, args.seed, scale=scale, shift=shift)
            batches = (torch.from_numpy(b) for b in stream.batches(args.batch))
            sae = StandardTrainingSAE(StandardTrainingSAEConfig(
                d_in=d, d_sae=d * args.expansion, l1_coefficient=l1,
                l1_warm_up_steps=int(round(0.05 * steps)), dtype="float32", device="cpu"))
            cfg = SAETrainerConfig(
                total_training_samples=steps * args.batch, train_batch_size_samples=args.batch,
                lr=args.lr, lr_end=args.lr, lr_scheduler_name="constant", adam_beta1=0.9,
                adam_beta2=0.999, device="cpu", n_checkpoints=0, save_final_checkpoint=False,
                logger=LoggingConfig(log_to_wandb=False))
            trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
            t0, c0 = time.perf_counter(), time.process_time()
            import contextlib
            import io
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                trainer.fit()
            tok_s = steps * args.batch / (time.perf_counter() - t0)
            tok_cpu_s = steps * args.batch / (time.process_time() - c0)
            ours = SAE(d, d * args.expansion)
            with torch.no_grad():
                W_enc, b_enc = sae.W_enc.detach().float(), sae.b_enc.detach().float()
                b_dec = sae.b_dec.detach().float()
                if sae.cfg.apply_b_dec_to_input:
                    b_enc = b_enc - b_dec @ W_enc
                ours.W_enc.copy_(W_enc)
                ours.b_enc.copy_(b_enc)
                ours.W_dec.copy_(sae.W_dec.detach().float())
                ours.b_dec.copy_(b_dec)
            ours.fold_input_normalization(torch.from_numpy(shift), scale)
            m = evaluate(ours.requires_grad_(False), arr, ev)
            peak = _vm("VmHWM") - base  # like ours: training + evaluation
            q = {k: m[k] for k in ("explained_variance", "mean_l0", "dead_fraction", "dense_fraction")}
        results.append({"l1": l1, "tokens_per_s": tok_s, "tokens_per_cpu_s": tok_cpu_s,
                        "peak_rss_growth_mib": peak, **q})
        print(f"  [{args.worker}] l1={l1:g}: {tok_s:,.0f} tokens/s, {tok_cpu_s:,.0f} tokens/CPU-s, EV {q['explained_variance']:.3f}, "
              f"L0 {q['mean_l0']:.1f}, dead {q['dead_fraction']:.3f}", file=sys.stderr, flush=True)
    print(json.dumps({"results": results}))


# ------------------------------------------------------------------------------- parent
def ev_at(results: list[dict], l0: float) -> float:
    pts = sorted((math.log(r["mean_l0"]), r["explained_variance"]) for r in results if r["mean_l0"] > 0)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return float(np.interp(math.log(l0), xs, ys))


def run_worker(name: str, args, data: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data", str(data), "--threads", str(args.threads),
           "--expansion", str(args.expansion), "--batch", str(args.batch), "--tokens", str(args.tokens),
           "--lr", str(args.lr), "--seed", str(args.seed), "--l1s", ",".join(f"{v:g}" for v in args.l1s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": f"worker {name} exited with {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=153_600, help="training tokens per SAE")
    ap.add_argument("--eval-tokens", type=int, default=32_768)
    ap.add_argument("--train-rows", type=int, default=131_072, help="rows of the training segment")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--l1s", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 2.0, 4.0])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 2, or 1 when the load average says the cores are busy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one l1, 102,400 tokens")
    ap.add_argument("--worker", choices=["ours", "saelens"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.l1s, args.tokens = [2.0], 102_400
    busy = os.getloadavg()[0]
    if args.threads is None:
        args.threads = 2 if busy < 1.0 else 1  # two spinning OpenMP threads on shared cores crawl

    print(f"SAE training benchmark: D {args.d} -> F {args.d * args.expansion}, batch {args.batch}, "
          f"{args.tokens:,} training tokens per SAE, lr {args.lr:g}, l1 {args.l1s}, "
          f"torch threads {args.threads}, CPU {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = make_activations(Path(tmp) / "acts.zarr", args.train_rows, args.eval_tokens, args.d, args.seed)
        print(f"synthetic activations: {args.train_rows:,} train + {args.eval_tokens:,} eval rows "
              f"({time.perf_counter() - t0:.1f} s)")
        res = {name: run_worker(name, args, data) for name in ("ours", "saelens")}

    ours, lens = res["ours"], res["saelens"]
    if "error" in ours:
        sys.exit(f"our trainer failed: {ours['error']}")
    print(f"\n{'trainer':<9} {'l1':>5} {'tokens/s':>10} {'tok/CPU-s':>10} {'peak MiB':>9} {'EV':>7} {'L0':>7} {'dead':>6} {'dense':>6}")
    for name, r in res.items():
        for row in r.get("results", []):
            print(f"{name:<9} {row['l1']:>5g} {row['tokens_per_s']:>10,.0f} {row['tokens_per_cpu_s']:>10,.0f} "
                  f"{row['peak_rss_growth_mib']:>9.0f} "
                  f"{row['explained_variance']:>7.3f} {row['mean_l0']:>7.1f} {row['dead_fraction']:>6.3f} "
                  f"{row['dense_fraction']:>6.3f}")
    if "error" in lens:
        print(f"\nSAELens baseline not run: {lens['error']} (pip install sae-lens)")
        return
    med = lambda r, k: float(np.median([x[k] for x in r["results"]]))  # noqa: E731
    speed = med(ours, "tokens_per_s") / med(lens, "tokens_per_s")
    mem = max(x["peak_rss_growth_mib"] for x in ours["results"]) / max(
        max(x["peak_rss_growth_mib"] for x in lens["results"]), 1e-9)
    cpu_speed = med(ours, "tokens_per_cpu_s") / med(lens, "tokens_per_cpu_s")
    print(f"\nspeed ratio ours / SAELens (median tokens/s, wall): {speed:.2f}x")
    print(f"speed ratio ours / SAELens (median tokens per CPU-second; robust on a shared machine): "
          f"{cpu_speed:.2f}x")
    print(f"peak RSS growth ratio ours / SAELens: {mem:.2f}")
    lo = max(min(x["mean_l0"] for x in r["results"]) for r in (ours, lens))
    hi = min(max(x["mean_l0"] for x in r["results"]) for r in (ours, lens))
    if lo <= hi:
        grid = np.geomspace(lo, hi, 5) if hi > lo else [lo]
        diffs = [ev_at(ours["results"], g) - ev_at(lens["results"], g) for g in grid]
        mid = math.sqrt(lo * hi)
        print(f"EV at matched L0 {mid:.1f}: ours {ev_at(ours['results'], mid):.3f}, "
              f"SAELens {ev_at(lens['results'], mid):.3f}; mean EV difference over L0 in "
              f"[{lo:.1f}, {hi:.1f}]: {np.mean(diffs):+.3f}")
    else:
        print(f"the two L0 ranges do not overlap (widen --l1s): ours "
              f"{[round(x['mean_l0'], 1) for x in ours['results']]}, SAELens "
              f"{[round(x['mean_l0'], 1) for x in lens['results']]}")


if __name__ == "__main__":
    main()
