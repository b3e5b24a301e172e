"""Cost of a paper-scale preset per rule: work, GPU memory and H100 hours (the README table).

    python benchmarks/paper_cost.py                                  # presets/paper.yaml
    python benchmarks/paper_cost.py --gpu-efficiency 0.6 --write-gbps 1.0

Sizes come from the preset (layers, d_model, expansion, token budgets, comparisons). Work is
counted, not timed: 2 FLOPs per multiply-add; a forward costs 2 x (non-embedding + unembedding
parameters) per token plus attention; an SAE step costs 12 d F per token (encoder and decoder
forward 4 d F, backward twice that). Parameter counts follow each architecture's layer shapes at
d_model = d (GPT-NeoX 12 d^2 per layer; Mamba in/out/x/dt projections with expand 2, d_state 16;
RWKV time- and channel-mix with d_ffn = 4 d) and a 50,304-row unembedding.

Rates: MEASURED on this project's 2-core CPU machine (shared, loaded): the SAE step at
d 768 -> 24,576 (SAELens' trainer, batch 4096: 480 tokens/s, PITFALLS.md) and the Pearson kernel
at F = 24,576, mean L0 48 (185 M co-active products/s, 1 thread, C kernel; 0.43 s zero-fill, 1.07 s
row/col max, 4.5 s first touch of the 4.5 GiB of sums; ``benchmarks/pearson_kernel.py --features 24576
--tokens 20000 --threads 1``). ASSUMED (no GPU here): the H100 runs float32 matmuls at
``--gpu-efficiency`` of its 67 TFLOP/s FP32 peak; compressed Zarr writes go at ``--write-gbps``;
a GPU job pays ``--job-overhead`` seconds of SLURM, Python and CUDA start-up; SAEs fire ``--l0``
features per token; float64 BLAS on the CPU runs at 50 GFLOP/s.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VOCAB = 50304
CPU_SAE_TOKENS_PER_S = 480.0          # measured, d 768 -> 24,576
CPU_PEARSON_PRODUCTS_PER_S = 185e6    # measured, 1 thread (C kernel)
CPU_PEARSON_FIXED_S = 0.43 + 1.07 + 4.5  # zero-fill + row/col max + first touch, per pair job
CPU_FP64_FLOPS = 50e9                 # assumed
H100_FP32 = 67e12


def params(arch: str, d: int, layers: int) -> float:
    """Non-embedding + unembedding parameters (the forward's matmul weights)."""
    if arch == "gpt_neox":
        per_layer = 12 * d * d
    elif arch == "mamba":
        inner, dt_rank, state = 2 * d, -(-d // 16), 16
        per_layer = d * 2 * inner + inner * d + inner * (dt_rank + 2 * state) + dt_rank * inner
    else:  # rwkv: 4 d^2 time mix, d x 4d + 4d x d + d^2 channel mix
        per_layer = 4 * d * d + 9 * d * d
    return per_layer * layers + VOCAB * d


def neuron_width(arch: str, d: int) -> int:
    return 4 * d if arch in ("gpt_neox", "rwkv") else 2 * 2 * d  # Mamba: SiLU(conv x) | SiLU(z)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=str(REPO / "presets" / "paper.yaml"))
    p.add_argument("--gpu-efficiency", type=float, default=0.4)
    p.add_argument("--write-gbps", type=float, default=0.5)
    p.add_argument("--job-overhead", type=float, default=20.0, help="seconds per GPU job")
    p.add_argument("--l0", type=float, default=48.0)
    a = p.parse_args(argv)
    cfg = yaml.safe_load(Path(a.preset).read_text())
    gpu = H100_FP32 * a.gpu_efficiency
    models, act, sae = cfg["models"], cfg["activations"], cfg["saes"]
    ctx = cfg["tokenizer"]["max_len"]
    n_sae, n_eval = act["sae_tokens"], act["eval_tokens"]
    rows = []

    def row(rule, jobs, work, mem, per_job_s, cpu=""):
        rows.append((rule, jobs, work, mem, per_job_s, cpu))

    # activations: one job per (model, site)
    for site in act["sites"]:
        secs, flops, gbytes, mem = [], [], [], []
        for m, s in models.items():
            d, L, arch = s["d_model"], s["n_layers"], s["arch"]
            tokens = n_sae + n_eval if site == "resid" else n_eval
            f = tokens * (2 * params(arch, d, L) + (4 * L * (ctx / 2) * d if arch == "gpt_neox" else 0))
            width = d if site == "resid" else neuron_width(arch, d)
            b = tokens * width * 2 * L  # float16
            secs.append(f / gpu + b / (a.write_gbps * 1e9) + a.job_overhead)
            flops.append(f)
            # every layer's site output and the fp32 logits of one batch stay on the GPU
            mem.append(act["batch_size"] * ctx * (width * L + VOCAB) * 4 / 1e9 + 4 * params(arch, d, L) / 1e9)
            gbytes.append(b / 1e9)
        row(f"activations {site}", len(models),
            f"forward {min(flops):.2g}-{max(flops):.2g} FLOPs; write {min(gbytes):.0f}-{max(gbytes):.0f} GB float16",
            f"{min(mem):.0f}-{max(mem):.0f} GB (batch of {act['batch_size']} x {ctx}: all layers + logits)", secs)
    # SAEs
    seeds = {m: sorted(set(sae["seeds"]) | set(sae.get("extra_seeds", {}).get(m, []))) for m in models}
    n_saes = sum(models[m]["n_layers"] * len(seeds[m]) for m in models)
    d = next(iter(models.values()))["d_model"]
    F = sae["expansion"] * d
    f_sae = 12 * d * F * sae["train_tokens"]
    row("train_sae", n_saes, f"{sae['train_tokens']:.3g} tokens x 12 d F = {f_sae:.2g} FLOPs",
        f"~{(4 * 2 * d * F * 4 + sae['batch_size'] * F * 4 * 3) / 1e9:.0f} GB (weights + Adam, batch x F)",
        [f_sae / gpu + a.job_overhead] * n_saes, f"{sae['train_tokens'] / CPU_SAE_TOKENS_PER_S / 3600:.0f} h per SAE")
    f_feat = 2 * d * F * n_eval
    row("features", n_saes, f"encode {n_eval:,} rows: {f_feat:.2g} FLOPs; CSR ~{n_eval * a.l0 * 8 / 1e9:.1f} GB", "~2 GB",
        [f_feat / gpu + 60 + a.job_overhead] * n_saes, f"{f_feat / (12 * d * F * CPU_SAE_TOKENS_PER_S) / 60:.0f} min per SAE")
    # Pearson pairs
    sae_pairs = neuron_pairs = 0
    for c in cfg["comparisons"].values():
        n = models[c["a"]]["n_layers"] * models[c["b"]]["n_layers"]
        if c["kind"] == "sae":
            sae_pairs += n
        else:
            neuron_pairs += n
    products = a.l0 * a.l0 * n_eval
    row("pearson_pair (SAE kinds)", sae_pairs, f"~{products:.2g} co-active pairs, {F}^2 float64 sums ({F * F * 8 / 2**30:.1f} GiB)",
        "~10 GB", [a.job_overhead + 5] * sae_pairs,
        f"{products / CPU_PEARSON_PRODUCTS_PER_S + CPU_PEARSON_FIXED_S:.0f} s per pair (1 thread)")
    w = neuron_width("gpt_neox", d)
    f_dense = 2 * n_eval * w * w
    row("pearson_pair (neuron)", neuron_pairs, f"dense {w} x {w} x {n_eval:,} float64: {f_dense:.2g} FLOPs", "~1 GB",
        [a.job_overhead + 1] * neuron_pairs, f"{f_dense / CPU_FP64_FLOPS / 60:.0f} min per pair (assumed 50 GFLOP/s)")

    print(f"preset {a.preset}: H100 at {a.gpu_efficiency:.0%} of FP32 peak, writes {a.write_gbps} GB/s, "
          f"{a.job_overhead:.0f} s per GPU job, L0 {a.l0:g}\n")
    print("| rule | jobs | per job: work | GPU memory | per job on 1 H100 | H100 hours (all jobs) | same work at the CPU rate |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    for rule, jobs, work, mem, secs, cpu in rows:
        hours = sum(secs) / 3600
        total += hours
        lo, hi = min(secs), max(secs)
        span = f"{lo / 60:.0f} min" if lo >= 120 else f"{lo:.0f} s"
        if hi > 1.2 * lo:
            span += f" - {hi / 60:.0f} min" if hi >= 120 else f" - {hi:.0f} s"
        print(f"| {rule} | {jobs:,} | {work} | {mem} | {span} | {hours:.1f} | {cpu or '-'} |")
    print(f"| **total (GPU rules)** | {sum(r[1] for r in rows):,} | | | | **{total:.0f}** | |")


if __name__ == "__main__":
    main()
