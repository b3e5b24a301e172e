"""IOI-style prompts and the off-by-one test of the paper's Appendix H, for Mamba models.

Prompts follow the frame of the paper's example sentence, one token per word::

    [BOS] Then , [IO] and [S] went to the hospital . [S] gave a computer to   -> [IO]

The frame words are random token ids drawn once per seed (the same frame for every prompt, as a
template); IO and S are random per prompt, distinct from each other and from the frame. The toy
zoo's tokenizer has no English names, so these are *IOI-style* prompts: the test asks where the
identity of IO and S enters the SSM states, whatever the model then does with it. Corruption (as
the paper): [IO'][S']...[S']..., both names replaced everywhere.

Metric: logit(IO) - logit(S) at the last position, patched minus clean, mean over prompts. Every
layer's SSM input c is patched at every position, corrupted -> clean, with later layers' SSM
states frozen to their clean values (as ``circuits.mamba_experiments``). The paper finds the
effect at the token after IO and the token after S (the off-by-one motif).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from universality.circuits.patching import SCAN_INPUTS, Patch, final_logits, path_patch, ssm_states

__all__ = ["FRAME", "ioi_prompts", "ioi_experiment", "summarise_ioi"]

#: The paper's example sentence (Fig. 13), one token per word; IO, S1, S2 are the name slots.
FRAME = ("Then", ",", "IO", "and", "S1", "went", "to", "the", "hospital", ".", "S2", "gave", "a",
         "computer", "to")


def ioi_prompts(n: int, vocab: int, bos: int, seed: int) -> dict:
    """``n`` clean and corrupted prompts [n, 1 + len(FRAME)] int64 and their answers.

    Returns ``{"clean", "corrupt", "io", "s", "labels"}``; ``labels[p]`` names position p
    (``BOS``, frame words, ``IO``, ``S1``, ``S2``).
    """
    ids = np.array([t for t in range(vocab) if t != bos], dtype=np.int64)
    words = sorted({w for w in FRAME if w not in ("IO", "S1", "S2")})
    if len(ids) < len(words) + 4:
        raise ValueError(f"vocabulary of {vocab} ids is too small for IOI-style prompts")
    rng = np.random.default_rng([seed, 101])
    frame = dict(zip(words, rng.choice(ids, size=len(words), replace=False)))
    pool = ids[~np.isin(ids, list(frame.values()))]
    labels = ["BOS", *FRAME]
    clean = np.empty((n, len(labels)), dtype=np.int64)
    corrupt = np.empty_like(clean)
    io, s = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        io[i], s[i], io_, s_ = rng.choice(pool, size=4, replace=False)
        for row, (a, b) in ((clean, (io[i], s[i])), (corrupt, (io_, s_))):
            row[i] = [bos] + [a if w == "IO" else b if w in ("S1", "S2") else frame[w] for w in FRAME]
    return {"clean": torch.from_numpy(clean), "corrupt": torch.from_numpy(corrupt),
            "io": torch.from_numpy(io), "s": torch.from_numpy(s), "labels": labels}


def _io_minus_s(logits: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (logits.gather(1, io[:, None]) - logits.gather(1, s[:, None]))[:, 0].double()


@torch.no_grad()
def ioi_experiment(model, prompts: dict, batch_size: int = 32, progress=None) -> pd.DataFrame:
    """c patched per (layer, position): one row each with ``logit_diff`` (mean patched - clean
    of logit(IO) - logit(S)), ``corrupt_logit_diff`` (the same for the corrupted run),
    ``fraction`` and ``clean_logit_diff``."""
    L, labels = model.n_layers, prompts["labels"]
    device = next(model.parameters()).device
    states = [f"blocks.{l}.mixer.hook_state" for l in range(L)]
    resid = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    names = [f"blocks.{l}.mixer.{n}" for l in range(L) for n in SCAN_INPUTS]
    sums: dict[tuple, list] = {}
    n = len(prompts["clean"])
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        clean_ids, corrupt_ids, io, s = (prompts[k][sl].to(device) for k in ("clean", "corrupt", "io", "s"))
        lc, clean = final_logits(model, clean_ids, names + resid)
        lx, corrupt = final_logits(model, corrupt_ids, names)
        clean.update({states[l]: ssm_states(model, clean, l) for l in range(L)})
        base, full = _io_minus_s(lc, io, s), _io_minus_s(lx, io, s)
        for layer in range(L):
            site = f"blocks.{layer}.mixer.hook_ssm_in"
            frozen = {m: clean[states[m]] for m in range(layer + 1, L)}
            for pos in range(1, len(labels)):
                out = path_patch(model, clean_ids, [Patch(site, corrupt[site], (slice(None), pos))],
                                 states=frozen, start=layer, resid=clean[resid[layer]])
                acc = sums.setdefault((layer, pos), [[], [], []])
                for part, v in zip(acc, (base, full, _io_minus_s(out, io, s))):
                    part.append(v)
                if progress:
                    progress()
    rows = []
    for (layer, pos), (b, f, p) in sums.items():
        b, f, p = torch.cat(b), torch.cat(f), torch.cat(p)
        delta, whole = float((p - b).mean()), float((f - b).mean())
        rows.append({"layer": layer, "position": pos, "token": labels[pos], "prompts": len(b),
                     "logit_diff": delta, "corrupt_logit_diff": whole,
                     "fraction": delta / whole if whole else math.nan, "clean_logit_diff": float(b.mean())})
    return pd.DataFrame(rows)


def summarise_ioi(table: pd.DataFrame) -> dict:
    """Where patching c moves logit(IO) - logit(S) most: per layer and overall (by |effect|)."""
    top = table.loc[table.logit_diff.abs().idxmax()]
    per_layer = {str(l): str(g.loc[g.logit_diff.abs().idxmax(), "token"]) for l, g in table.groupby("layer")}
    after = {"IO": "and", "S1": "went", "S2": "gave"}   # the token after each name slot
    by_token = table.groupby("position").logit_diff.apply(lambda v: float(v.abs().max()))
    labels = dict(zip(table.position, table.token))
    ranked = [labels[p] for p in by_token.sort_values(ascending=False).index]
    return {"peak_layer": int(top.layer), "peak_token": str(top.token), "peak_logit_diff": float(top.logit_diff),
            "peak_token_by_layer": per_layer, "tokens_by_effect": ranked[:5],
            "corrupt_logit_diff": float(table.corrupt_logit_diff.iloc[0]),
            "clean_logit_diff": float(table.clean_logit_diff.iloc[0]), "after_name": after}
