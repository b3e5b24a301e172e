"""Transformer induction circuits (models with attention heads): head scores, head patching, and
path patching from sender heads into the induction heads' query / key / value inputs.

Prompts, corruptions and the metric (B's logit at the final [A], patched - clean, per prompt) as
in :mod:`universality.circuits.induction`; means over prompts with bootstrap intervals
(:class:`universality.circuits.effects.Effects`).

Path patching sender -> receiver (Wang et al. 2023, the paper's Fig. 6): the sender head's write
into the residual stream (``hook_result``, W_O^h z^h) takes its corrupted value and reaches the
receiver head's input DIRECTLY, every other component between them frozen at its clean value:
the receiver layer's input is clean resid_pre + (corrupted - clean write of the sender). From it
the receiver layer's query, key and value are computed (``hook_q`` / ``hook_k`` / ``hook_v``, after
RoPE) and ONE of them, for the receiver head only, replaces the clean one in the clean run; the
effect on the logits then flows through everything downstream of the receiver. Senders: every
head of a layer before the receiver's. Receivers: the ``receivers`` heads of highest induction
score (outside layer 0). Expected circuit: previous-token head -> induction head through the key,
under [A'][B]...[A] (the previous-token head at B1 writes "A came before me").
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from universality.circuits.effects import Effects
from universality.circuits.induction import A_, CORRUPTIONS, Prompts, answer_logit, batches
from universality.circuits.patching import Patch, capture_block, final_logits, patched_final_logits

__all__ = ["repeated_tokens", "head_scores", "head_patching", "receivers_of", "head_path_patching",
           "summarise_neox", "INPUTS", "empty_paths"]

#: The receiver inputs of path patching.
INPUTS = ("q", "k", "v")


def repeated_tokens(n: int, length: int, vocab: int, bos: int, seed: int) -> torch.Tensor:
    """[n, 1 + 2 * length] int64 rows [BOS] R R with R ``length`` random non-BOS tokens."""
    ids = np.array([t for t in range(vocab) if t != bos], dtype=np.int64)
    rng = np.random.default_rng([seed, length])
    r = rng.choice(ids, size=(n, length))
    return torch.from_numpy(np.concatenate([np.full((n, 1), bos), r, r], axis=1))


@torch.no_grad()
def head_scores(model, ids: torch.Tensor, length: int) -> pd.DataFrame:
    """Previous-token and induction scores per head on rows [BOS] R R (``repeated_tokens``).

    prev_token: mean attention from query q to key q-1 over q = 2..2L (the prefix of every
    position). induction: mean attention from a second-copy query q (positions L+1..2L) to key
    q - L + 1, the token after the query's earlier occurrence. Both lie in [0, 1].
    """
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.n_layers)]
    _, cache = final_logits(model, ids.to(next(model.parameters()).device), names)
    cache = {k: v.cpu() for k, v in cache.items()}
    q = torch.arange(2, ids.shape[1])
    q2 = torch.arange(length + 1, 2 * length + 1)
    rows = []
    for l, name in enumerate(names):
        pat = cache[name].double()                         # [batch, head, q, k]
        prev = pat[:, :, q, q - 1].mean((0, 2))
        ind = pat[:, :, q2, q2 - length + 1].mean((0, 2))
        for h in range(pat.shape[1]):
            rows.append({"layer": l, "head": h, "prev_token": float(prev[h]), "induction": float(ind[h])})
    return pd.DataFrame(rows)


def _resid_names(model) -> list[str]:
    return [f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)]


@torch.no_grad()
def head_patching(model, prompts: list[Prompts], batch_size: int = 32, effects: Effects | None = None,
                  progress=None) -> Effects:
    """Activation patching of each head's ``hook_z`` (all positions), corrupted -> clean: table
    ``head_patching``, one row per (distance, layer, head, corruption)."""
    effects = effects or Effects()
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.n_layers)]
    resid_pre = _resid_names(model)
    device = next(model.parameters()).device
    for p in prompts:
        for sl in batches(len(p.clean), batch_size):
            answer, clean_ids = p.answer[sl].to(device), p.clean[sl].to(device)
            lc, clean = final_logits(model, clean_ids, resid_pre)
            for corr in CORRUPTIONS:
                lx, cache = final_logits(model, p.corrupt[corr][sl].to(device), names)
                for l, name in enumerate(names):
                    for h in range(cache[name].shape[2]):
                        patched = patched_final_logits(model, clean_ids,
                                                       [Patch(name, cache[name], (slice(None), slice(None), h))],
                                                       start=l, resid=clean[resid_pre[l]])
                        effects.add("head_patching", {"distance": p.distance, "layer": l, "head": h, "corruption": corr},
                                    answer_logit(lc, answer), answer_logit(lx, answer), answer_logit(patched, answer))
                        if progress:
                            progress()
    return effects


def receivers_of(scores: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads of highest induction score outside layer 0 (they need senders before them)."""
    later = scores[scores.layer > 0].sort_values(["induction", "layer", "head"], ascending=[False, True, True])
    return [(int(r.layer), int(r.head)) for r in later.head(k).itertuples()]


@torch.no_grad()
def head_path_patching(model, prompts: list[Prompts], receivers: list[tuple[int, int]], batch_size: int = 32,
                       effects: Effects | None = None, progress=None) -> Effects:
    """Path patching sender head -> receiver head's q / k / v (module docstring): table
    ``head_paths``, one row per (distance, sender layer, sender head, receiver layer, receiver
    head, input, corruption)."""
    effects = effects or Effects()
    if not receivers:
        return effects
    top = max(l for l, _ in receivers)
    results = [f"blocks.{l}.attn.hook_result" for l in range(top)]
    resid_pre = _resid_names(model)
    device = next(model.parameters()).device
    for p in prompts:
        for sl in batches(len(p.clean), batch_size):
            answer, clean_ids = p.answer[sl].to(device), p.clean[sl].to(device)
            lc, clean = final_logits(model, clean_ids, resid_pre + results)
            c_logit = answer_logit(lc, answer)
            for corr in CORRUPTIONS:
                lx, bad = final_logits(model, p.corrupt[corr][sl].to(device), results)
                x_logit = answer_logit(lx, answer)
                for rl in sorted({l for l, _ in receivers}):
                    qkv = [f"blocks.{rl}.attn.hook_{i}" for i in INPUTS]
                    for sender_layer in range(rl):
                        name = results[sender_layer]
                        for sh in range(clean[name].shape[2]):
                            write = bad[name][:, :, sh] - clean[name][:, :, sh]      # [b, pos, d_model]
                            seen = capture_block(model, clean[resid_pre[rl]] + write, rl, qkv)
                            for rh in (h for l, h in receivers if l == rl):
                                for inp, site in zip(INPUTS, qkv):
                                    out = patched_final_logits(model, clean_ids,
                                                               [Patch(site, seen[site], (slice(None), slice(None), rh))],
                                                               start=rl, resid=clean[resid_pre[rl]])
                                    key = {"distance": p.distance, "sender_layer": sender_layer, "sender_head": sh,
                                           "receiver_layer": rl, "receiver_head": rh, "input": inp, "corruption": corr}
                                    effects.add("head_paths", key, c_logit, x_logit, answer_logit(out, answer))
                                    if progress:
                                        progress()
    return effects


def empty_paths() -> pd.DataFrame:
    """The ``head_paths`` table without rows (no receiver), with its columns."""
    return pd.DataFrame(columns=["distance", "sender_layer", "sender_head", "receiver_layer", "receiver_head",
                                 "input", "corruption", "prompts", "logit_diff", "ci_low", "ci_high",
                                 "corrupt_logit_diff", "corrupt_ci_low", "corrupt_ci_high", "fraction", "clean_logit"])


def _name(layer, head) -> str:
    return f"L{int(layer)}H{int(head)}"


def summarise_neox(scores: pd.DataFrame, effects: Effects) -> dict:
    """The induction head (highest induction score), the previous-token head (highest
    previous-token score in an earlier layer, else anywhere), their patching effects, and the
    strongest measured path into the induction head (the sender whose key-input path lowers B's
    logit most under [A'][B]...[A], with its bootstrap win share)."""
    ind = scores.loc[scores.induction.idxmax()]
    earlier = scores[scores.layer < ind["layer"]]
    prev = (earlier if len(earlier) else scores).pipe(lambda s: s.loc[s.prev_token.idxmax()])
    patching = effects.table("head_patching")
    effect = patching.groupby(["layer", "head", "corruption"])["logit_diff"].mean()

    def head(row):
        l, h = int(row["layer"]), int(row["head"])
        return {"layer": l, "head": h, "name": _name(l, h), "prev_token_score": float(row["prev_token"]),
                "induction_score": float(row["induction"]),
                "logit_diff": {c: float(effect[(l, h, c)]) for c in CORRUPTIONS if (l, h, c) in effect}}

    out = {"induction_head": head(ind), "previous_token_head": head(prev),
           "induction_heads": int((scores.induction > 0.5).sum()),
           "previous_token_heads": int((scores.prev_token > 0.5).sum()),
           "corrupt_logit_diff": {c: float(patching[patching.corruption == c]
                                           .groupby("distance")["corrupt_logit_diff"].first().mean())
                                  for c in CORRUPTIONS}}
    for c in CORRUPTIONS:
        sub = patching[patching.corruption == c].groupby(["layer", "head"])["logit_diff"].mean()
        out.setdefault("strongest_patched_head", {})[c] = _name(*sub.idxmin())
    paths = effects.keys("head_paths")
    if paths:
        rl, rh = int(ind["layer"]), int(ind["head"])
        if not any(k["receiver_layer"] == rl and k["receiver_head"] == rh for k in paths):
            rl, rh = paths[0]["receiver_layer"], paths[0]["receiver_head"]
        out["paths"] = {}
        for inp in INPUTS:
            for corr in CORRUPTIONS:
                w = _sender_wins(effects, rl, rh, inp, corr)
                out["paths"][f"{inp} {corr}"] = w
        out["path_receiver"] = _name(rl, rh)
        best = out["paths"][f"k {A_}"]
        out["strongest_path"] = {"sender": best["winner"], "receiver": _name(rl, rh), "input": "k",
                                 "corruption": A_, "logit_diff": best["mean"][best["winner"]],
                                 "share": best["share"][best["winner"]]}
    return out


def _sender_wins(effects: Effects, rl: int, rh: int, inp: str, corr: str) -> dict:
    """``Effects.wins`` over sender heads (named L{l}H{h}) of one receiver input and corruption."""
    sub = Effects(effects.n_boot, effects.level, effects.seed)
    for k in effects.keys("head_paths"):
        if (k["receiver_layer"], k["receiver_head"], k["input"], k["corruption"]) == (rl, rh, inp, corr):
            clean, corrupt, patched = effects.values("head_paths", k)
            sub.add("p", {"distance": k["distance"], "sender": _name(k["sender_layer"], k["sender_head"])},
                    *(torch.from_numpy(v) for v in (clean, corrupt, patched)))
    return sub.wins("p", "sender")

