"""The SAE stage: train one SAE per (model, site, layer, seed) and evaluate it in the model.

Training is :func:`universality.sae.train.train_sae`; this adds what needs the language model:
CE-loss recovered when the SAE's reconstruction replaces the residual stream at its layer.
"""
from __future__ import annotations

from pathlib import Path

import torch

from universality.data import corpus
from universality.models import registry as models
from universality.core import store
from universality.zoo import train as zoo
from universality.core.device import as_device
from universality.sae.config import SAETrainConfig
from universality.sae.evaluate import ce_loss_recovered
from universality.sae.model import SAE
from universality.sae.train import train_sae


def ce_losses(model, eval_set: str, layer: int, fn, windows: int) -> dict:
    """Clean, spliced (resid -> ``fn(resid)``) and zero-ablated (resid -> 0) CE loss in nats,
    over the first ``windows`` windows of the eval token set."""
    tokens = corpus.TokenSet(eval_set)
    max_len = int(tokens.attrs["max_len"])

    def loss():
        return zoo.eval_loss(model, tokens, max_len, batch=8, max_windows=windows)

    clean = loss()
    with models.patch_resid(model, layer, fn):
        spliced = loss()
    with models.patch_resid(model, layer, torch.zeros_like):
        zero = loss()
    return {"clean": clean, "spliced": spliced, "zero_ablated": zero}


def train_and_evaluate(model_name, site, layer, seed, acts_path, model_dir, eval_set, options, out, threads,
                       device: str | torch.device = "cpu", init_seed: int | None = None,
                       data_seed: int | None = None, label: str | None = None):
    """Train the SAE (:func:`train_sae`) with the recipe ``options`` (the `saes` keys of this
    (model, layer), :meth:`SAETrainConfig.from_options`) and, for ``resid``, add CE-loss recovered
    to its metrics. Training, evaluation and the language model run on ``device`` (see
    :mod:`universality.core.device`). ``init_seed`` / ``data_seed`` (default ``seed``): see
    :func:`train_sae`; ``label`` names the run (default ``model/site/L{layer}/seed{seed}``)."""
    device = as_device(device)
    cfg = SAETrainConfig.from_options(options)
    label = label or f"{model_name}/{site}/L{layer}/seed{seed}"
    metrics = train_sae(
        acts_path, out, cfg, seed=seed, init_seed=init_seed, data_seed=data_seed, label=label,
        num_threads=threads, device=device,
        metadata={"model_name": model_name, "site": site, "layer": layer, "sae_seed": seed,
                  "hook_name": f"blocks.{layer}.hook_resid_post" if site == "resid" else f"blocks.{layer}.{site}"},
    )
    if site == "resid" and cfg.ce_windows > 0:
        lm = models.load_model(model_dir).to(device)
        sae = SAE.load(out, device=device)
        ce = ce_losses(lm, eval_set, layer, lambda x: sae(x.float())[0].to(x.dtype), cfg.ce_windows)
        ce["recovered"] = ce_loss_recovered(ce["clean"], ce["spliced"], ce["zero_ablated"])
        metrics["ce_loss"] = ce
        metrics["ce_loss_recovered"] = ce["recovered"]
        store.write_json(Path(out) / "metrics.json", metrics)
    return metrics
