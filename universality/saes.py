"""The SAE stage: train one SAE per (model, site, layer, seed) and evaluate it in the model.

Training is :func:`universality.train_sae.train_sae`; this adds what needs the language model:
CE-loss recovered when the SAE's reconstruction replaces the residual stream at its layer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import corpus, models, store
from .sae import SAE
from .train_sae import ce_loss_recovered, train_sae

#: Keys of the config's `saes` section that are passed through to the trainer.
TRAINER_KEYS = ("expansion", "l1", "lr", "lr_decay", "batch_size", "buffer_tokens", "checkpoint_every")


def eval_batches(eval_set: str, windows: int, batch: int = 8):
    """The first ``windows`` windows of the eval token set as (ids, mask) batches for CE."""
    tokens = corpus.TokenSet(eval_set)
    out = []
    for lo in range(0, min(windows, len(tokens)), batch):
        wins = range(lo, min(lo + batch, windows, len(tokens)))
        length = int(max(tokens.lengths()[w] for w in wins))
        ids = np.full((len(wins), length), tokens.bos_id, dtype=np.int64)
        mask = np.zeros((len(wins), length - 1), dtype=bool)
        for i, w in enumerate(wins):
            win = tokens.window(w)
            ids[i, : len(win)] = win
            mask[i, : len(win) - 1] = True
        out.append((torch.from_numpy(ids), torch.from_numpy(mask)))
    return out


def train_and_evaluate(model_name, site, layer, seed, acts_path, model_dir, eval_set, options, out, threads):
    label = f"{model_name}/{site}/L{layer}/seed{seed}"
    kwargs = {k: options[k] for k in TRAINER_KEYS if k in options}
    metrics = train_sae(
        acts_path, out, n_train_tokens=options["train_tokens"], seed=seed, label=label,
        num_threads=threads,
        metadata={"model_name": model_name, "site": site, "layer": layer, "sae_seed": seed,
                  "hook_name": f"blocks.{layer}.hook_resid_post" if site == "resid" else f"blocks.{layer}.{site}"},
        **kwargs,
    )
    if site == "resid" and options.get("ce_windows", 0) > 0:
        lm = models.load_model(model_dir)
        sae = SAE.load(out)
        ce = models.ce_with_replacement(lm, eval_batches(eval_set, options["ce_windows"]), layer,
                                        lambda x: sae(x.float())[0].to(x.dtype))
        ce["recovered"] = ce_loss_recovered(ce["clean"], ce["spliced"], ce["zero_ablated"])
        metrics["ce_loss"] = ce
        metrics["ce_loss_recovered"] = ce["recovered"]
        store.write_json(Path(out) / "metrics.json", metrics)
    return metrics
