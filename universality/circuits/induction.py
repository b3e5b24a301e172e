"""Induction circuits: prompts, the logit metric, and the experiments of Wang et al. 2024 Sec. 6.

Prompts (one layout per distance d, shared by every prompt of that distance)::

    position: 0     1..P        A1  B1=A1+1   ...filler...   A2=A1+d
    token:    BOS   prefix      A   B         random          A        -> the model should say B

``P = PREFIX`` random tokens precede A1 so that the conv window of A1 never holds BOS. Every
random token is drawn from the tokenizer's ids (BOS excluded) and differs from A, B, A', B'.
Corruptions: ``B'`` = [A][B']...[A] (B1 replaced), ``A'`` = [A'][B]...[A] (A1 replaced).

Metric (the paper's Appendix G tables): the logit of the clean answer B at the last position,
patched run minus clean run, averaged over prompts ("logit diff of token B"; negative = the
patch removed evidence for B). ``fraction`` divides by the same difference for the fully
corrupted run (1 = the patch alone does all the corruption does).

Mamba experiments (path patching, corrupted -> clean, other layers' SSM states frozen clean):
``state`` per layer, ``ssm_in`` (c) per layer and position, ``conv_in`` (x) at the key layer under
both corruptions. GPT-NeoX: previous-token and induction attention scores per head, and
activation patching of each head's output ``hook_z``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from universality.models import registry
from universality.circuits.patching import SCAN_INPUTS, Patch, final_logits, patched_final_logits, path_patch, ssm_states

__all__ = ["prompt_vocab", "PREFIX", "Prompts", "induction_prompts",
           "repeated_tokens", "mamba_experiments", "head_scores", "head_patching", "key_layer", "prompt_length", "summarise_mamba",
           "summarise_neox", "POSITIONS", "describe_mamba", "describe_neox"]

#: Random tokens before A1 (so the width-4 conv at A1 reads tokens, not BOS).
PREFIX = 4
#: Position labels relative to A1/B1 used by the c / x tables (the paper's columns).
POSITIONS = {"A1": 0, "B1": 1, "B1+1": 2, "B1+2": 3, "B1+3": 4}
A_, B_ = "A'", "B'"          # [A'][B]...[A] and [A][B']...[A]
CORRUPTIONS = (B_, A_)


def prompt_length(distance: int) -> int:
    """Tokens in a prompt of this A1-A2 distance (BOS and prefix included)."""
    return 1 + PREFIX + distance + 1


@dataclass
class Prompts:
    """Clean and corrupted prompts of one distance; all int64 [n, prompt_length(distance)]."""

    distance: int
    clean: torch.Tensor
    corrupt: dict[str, torch.Tensor]      # {"B'": ..., "A'": ...}
    answer: torch.Tensor                  # B [n]
    a1: int                               # position of A1 (B1 = a1 + 1, A2 = a1 + distance)

    @property
    def b1(self) -> int:
        return self.a1 + 1


def induction_prompts(n: int, distance: int, vocab: int, bos: int, seed: int) -> Prompts:
    """``n`` prompts [BOS] prefix A B filler A (layout in the module docstring)."""
    if distance < 2:
        raise ValueError(f"distance must be >= 2 (A1, B1 and A2 distinct), got {distance}")
    ids = np.array([t for t in range(vocab) if t != bos], dtype=np.int64)
    if len(ids) < 8:
        raise ValueError(f"vocabulary of {vocab} ids is too small for induction prompts")
    rng = np.random.default_rng([seed, distance])
    length = prompt_length(distance)
    a1 = 1 + PREFIX
    clean = np.empty((n, length), dtype=np.int64)
    corrupt = {c: np.empty((n, length), dtype=np.int64) for c in CORRUPTIONS}
    answer = np.empty(n, dtype=np.int64)
    for i in range(n):
        a, b, a_, b_ = rng.choice(ids, size=4, replace=False)
        pool = ids[~np.isin(ids, [a, b, a_, b_])]
        row = rng.choice(pool, size=length)
        row[0], row[a1], row[a1 + 1], row[a1 + distance] = bos, a, b, a
        clean[i], answer[i] = row, b
        corrupt["B'"][i] = row
        corrupt["B'"][i, a1 + 1] = b_
        corrupt["A'"][i] = row
        corrupt["A'"][i, a1] = a_
    return Prompts(distance, torch.from_numpy(clean), {k: torch.from_numpy(v) for k, v in corrupt.items()},
                   torch.from_numpy(answer), a1)


def _answer_logit(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """logits [n, vocab] -> logit of each prompt's answer [n] (float64 for the means)."""
    return logits.gather(1, answer[:, None])[:, 0].double()


def _row(base: dict, clean: torch.Tensor, corrupt: torch.Tensor, patched: torch.Tensor) -> dict:
    """One table row: means over prompts of the clean-answer logit change (patched - clean)."""
    delta = float((patched - clean).mean())
    full = float((corrupt - clean).mean())
    return {**base, "logit_diff": delta, "corrupt_logit_diff": full,
            "fraction": delta / full if full else math.nan, "clean_logit": float(clean.mean())}


def prompt_vocab(tokenizer_json: str, model) -> tuple[int, int]:
    """(ids to draw from: the first ``vocab`` ids, BOS id): ids both the tokenizer and the
    model's embedding know (Mamba-130m pads its embedding past the tokenizer's 50,277 ids)."""
    from universality.data import corpus

    tok = corpus.load_tokenizer(tokenizer_json)
    return min(tok.get_vocab_size(), model.config.vocab_size), corpus.bos_id(tok)


def setup(model_dir: str, tokenizer_json: str, options: dict):
    """What every circuits job starts from: (model on the ``options["backend"]`` device, vocab,
    BOS id, the induction prompts of every distance in ``options["distances"]``)."""
    from universality.core.device import torch_device

    lm = registry.load_model(model_dir).to(torch_device(options.get("backend", "auto")))
    vocab, bos = prompt_vocab(tokenizer_json, lm)
    prompts = [induction_prompts(options["prompts"], d, vocab, bos, options["seed"])
               for d in options["distances"]]
    return lm, vocab, bos, prompts


# ----------------------------------------------------------------------------------- Mamba
def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _state_names(n_layers: int) -> list[str]:
    return [f"blocks.{l}.mixer.hook_state" for l in range(n_layers)]


@torch.no_grad()
def mamba_experiments(model, prompts: list[Prompts], batch_size: int = 32,
                      positions: dict[str, int] = POSITIONS, conv_positions=("A1", "B1", "B1+1"),
                      key: int | None = None, progress=None) -> dict[str, pd.DataFrame]:
    """All Mamba path-patching tables for the given prompt sets (one set per distance).

    Returns ``{"state": ..., "ssm_in": ..., "conv_in": ...}``: one row per (distance, layer
    [, position], corruption) with ``logit_diff`` (mean patched - clean logit of B),
    ``corrupt_logit_diff`` (the same for the corrupted run), ``fraction`` and ``clean_logit``.
    ``ssm_in`` covers every layer (the off-by-one map); ``conv_in`` covers the key layer, found
    from the ``state`` table (``key_layer``) unless ``key`` is given.
    """
    n_layers = model.n_layers
    device = next(model.parameters()).device
    states = _state_names(n_layers)
    resid_pre = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    scan_inputs = [f"blocks.{l}.mixer.{n}" for l in range(n_layers) for n in SCAN_INPUTS]
    acc: dict[tuple, list] = {}       # (table, distance, layer, position, corruption) -> [clean, corrupt, patched]

    def add(key_, clean, corrupt, patched):
        parts = acc.setdefault(key_, [[], [], []])
        for store_, value in zip(parts, (clean, corrupt, patched)):
            store_.append(value)

    def site_runs(p: Prompts, sl, corr, jobs):
        """Passes 1 and 2 for one batch, then one third pass per job (one sender each).

        Layers after the sender's get their clean states (frozen); layers before it are not
        touched, as they compute exactly their clean values anyway.
        """
        clean_ids, corrupt_ids, answer = (t[sl].to(device) for t in (p.clean, p.corrupt[corr], p.answer))
        names = sorted({site for _, site, _ in jobs if site not in states} | set(scan_inputs))
        lc, clean_cache = final_logits(model, clean_ids, names + resid_pre)
        lx, corrupt_cache = final_logits(model, corrupt_ids, names)
        for cache in (clean_cache, corrupt_cache):
            cache.update({states[l]: ssm_states(model, cache, l) for l in range(n_layers)})
        c_logit, x_logit = _answer_logit(lc, answer), _answer_logit(lx, answer)
        for (table, layer, pos_label), site, index in jobs:
            frozen = {m: clean_cache[states[m]] for m in range(layer + 1, n_layers)}
            # Blocks before the sender's compute their clean values: start at the sender's block.
            skip = dict(start=layer, resid=clean_cache[resid_pre[layer]])
            if site in states:          # the sender is this layer's SSM state, patched whole
                patched = path_patch(model, clean_ids, states={layer: corrupt_cache[site], **frozen}, **skip)
            else:
                patched = path_patch(model, clean_ids, [Patch(site, corrupt_cache[site], index)],
                                     states=frozen, **skip)
            add((table, p.distance, layer, pos_label, corr), c_logit, x_logit, _answer_logit(patched, answer))
            if progress:
                progress()

    for p in prompts:
        for sl in _batches(len(p.clean), batch_size):
            jobs = []
            for layer in range(n_layers):
                jobs.append((("state", layer, "all"), states[layer], None))
                for label, off in positions.items():
                    jobs.append((("ssm_in", layer, label), f"blocks.{layer}.mixer.hook_ssm_in",
                                 (slice(None), p.a1 + off)))
            site_runs(p, sl, B_, jobs)
    tables = _frames(acc)
    key = key_layer(tables["state"]) if key is None else key
    for p in prompts:
        for sl in _batches(len(p.clean), batch_size):
            for corr in CORRUPTIONS:
                jobs = [(("conv_in", key, label), f"blocks.{key}.mixer.hook_conv_in",
                         (slice(None), p.a1 + positions[label])) for label in conv_positions]
                site_runs(p, sl, corr, jobs)
    tables = _frames(acc)
    tables["state"] = tables["state"].drop(columns="position")
    return tables


def _frames(acc: dict) -> dict[str, pd.DataFrame]:
    rows: dict[str, list] = {}
    for (table, distance, layer, position, corr), (clean, corrupt, patched) in acc.items():
        base = {"distance": distance, "layer": layer, "position": position, "corruption": corr,
                "prompts": int(sum(len(c) for c in clean))}
        rows.setdefault(table, []).append(_row(base, torch.cat(clean), torch.cat(corrupt), torch.cat(patched)))
    return {t: pd.DataFrame(r) for t, r in rows.items()}


def key_layer(state: pd.DataFrame) -> int:
    """The layer whose SSM state, patched, lowers the clean answer's logit most (mean over distances)."""
    per_layer = state.groupby("layer")["logit_diff"].mean()
    return int(per_layer.idxmin())


def summarise_mamba(tables: dict[str, pd.DataFrame]) -> dict:
    """Key layer, where the effect sits (position of c and x), numbers for the report."""
    state, c, x = tables["state"], tables["ssm_in"], tables["conv_in"]
    key = key_layer(state)
    per_layer = state.groupby("layer")["logit_diff"].mean()
    c_key = c[c.layer == key].groupby("position")["logit_diff"].mean()
    x_means = {corr: x[x.corruption == corr].groupby("position")["logit_diff"].mean()
               for corr in sorted(x.corruption.unique())}
    corrupt = float(state.groupby("distance")["corrupt_logit_diff"].first().mean())
    return {
        "key_layer": key,
        "state_logit_diff_by_layer": {str(k): float(v) for k, v in per_layer.items()},  # JSON keys
        "corrupt_logit_diff": corrupt,
        # ratio of the means, not the mean of per-distance ratios: at long distances the full
        # corruption's effect nears zero and its ratio swings (measured: -2.27 at distance 128)
        "key_layer_fraction": float(per_layer[key] / corrupt) if corrupt else math.nan,
        "ssm_in_peak_position": str(c_key.idxmin()),
        "ssm_in_logit_diff_by_position": {k: float(v) for k, v in c_key.items()},
        "conv_in_peak_position": {corr: str(m.idxmin()) for corr, m in x_means.items()},
        "conv_in_logit_diff_by_position": {corr: {k: float(v) for k, v in m.items()}
                                           for corr, m in x_means.items()},
    }


# ----------------------------------------------------------------------------------- GPT-NeoX
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


@torch.no_grad()
def head_patching(model, prompts: list[Prompts], batch_size: int = 32, progress=None) -> pd.DataFrame:
    """Activation patching of each head's ``hook_z`` (all positions), corrupted -> clean.

    One row per (distance, layer, head, corruption) with the columns of ``mamba_experiments``.
    """
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.n_layers)]
    resid_pre = [f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)]
    device = next(model.parameters()).device
    acc: dict[tuple, list] = {}
    for p in prompts:
        for sl in _batches(len(p.clean), batch_size):
            answer, clean_ids = p.answer[sl].to(device), p.clean[sl].to(device)
            lc, clean = final_logits(model, clean_ids, resid_pre)
            for corr in CORRUPTIONS:
                lx, cache = final_logits(model, p.corrupt[corr][sl].to(device), names)
                for l, name in enumerate(names):
                    for h in range(cache[name].shape[2]):
                        patched = patched_final_logits(model, clean_ids,
                                                       [Patch(name, cache[name], (slice(None), slice(None), h))],
                                                       start=l, resid=clean[resid_pre[l]])
                        parts = acc.setdefault((p.distance, l, h, corr), [[], [], []])
                        for s, v in zip(parts, (lc, lx, patched)):
                            s.append(_answer_logit(v, answer))
                        if progress:
                            progress()
    rows = [_row({"distance": d, "layer": l, "head": h, "corruption": c, "prompts": int(sum(map(len, cl)))},
                 torch.cat(cl), torch.cat(cx), torch.cat(cp))
            for (d, l, h, c), (cl, cx, cp) in acc.items()]
    return pd.DataFrame(rows)


def summarise_neox(scores: pd.DataFrame, patching: pd.DataFrame) -> dict:
    """The induction head (highest induction score) and the previous-token head (highest
    previous-token score in an earlier layer, else anywhere), with their patching effects."""
    ind = scores.loc[scores.induction.idxmax()]
    earlier = scores[scores.layer < ind["layer"]]
    prev = (earlier if len(earlier) else scores).pipe(lambda s: s.loc[s.prev_token.idxmax()])
    effect = patching.groupby(["layer", "head", "corruption"])["logit_diff"].mean()

    def head(row):
        l, h = int(row["layer"]), int(row["head"])
        return {"layer": l, "head": h, "name": f"L{l}H{h}", "prev_token_score": float(row["prev_token"]),
                "induction_score": float(row["induction"]),
                "logit_diff": {c: float(effect[(l, h, c)]) for c in CORRUPTIONS if (l, h, c) in effect}}

    strongest = {c: patching[patching.corruption == c].groupby(["layer", "head"])["logit_diff"].mean().idxmin()
                 for c in CORRUPTIONS}
    return {"induction_head": head(ind), "previous_token_head": head(prev),
            "induction_heads": int((scores.induction > 0.5).sum()),
            "previous_token_heads": int((scores.prev_token > 0.5).sum()),
            "corrupt_logit_diff": {c: float(patching[patching.corruption == c]
                                            .groupby("distance")["corrupt_logit_diff"].first().mean())
                                   for c in CORRUPTIONS},
            "strongest_patched_head": {c: f"L{int(l)}H{int(h)}" for c, (l, h) in strongest.items()}}


# ----------------------------------------------------------------------------------- report text
def describe_mamba(s: dict) -> str:
    """One paragraph stating the Mamba findings from a ``summarise_mamba`` summary (+ ``model``)."""
    k = s["key_layer"]
    by_layer = s["state_logit_diff_by_layer"]
    others = ", ".join(f"L{l} {v:+.2f}" for l, v in by_layer.items() if int(l) != k)
    c = s["ssm_in_logit_diff_by_position"]
    x = s["conv_in_logit_diff_by_position"]
    peak = s["ssm_in_peak_position"]
    off = ("one token after B1 (the off-by-one motif)" if peak == "B1+1" else
           "at B1 itself (no off-by-one delay)" if peak == "B1" else f"at {peak}")
    return (f"{s['model']}: the key layer is {k}. Patching its SSM state from [A][B']...[A] into the "
            f"clean run (other layers' states frozen) changes the logit of B by {by_layer[str(k)]:+.2f} "
            f"on average over distances ({s['key_layer_fraction']:.0%} of the full corruption's "
            f"{s['corrupt_logit_diff']:+.2f}; other layers: {others}). At layer {k} the SSM input c "
            f"matters most {off}: {', '.join(f'{p} {v:+.2f}' for p, v in c.items())}. The conv input x "
            f"carries B at {s['conv_in_peak_position'].get(B_, '?')} under [A][B']...[A] "
            f"and A at {s['conv_in_peak_position'].get(A_, '?')} under [A'][B]...[A] ("
            + "; ".join(f"{corr}: " + ", ".join(f"{p} {v:+.2f}" for p, v in m.items()) for corr, m in x.items())
            + "). " + _motif(s) + _ioi_sentence(s.get("ioi")))


def _ioi_sentence(i: dict | None) -> str:
    if not i:
        return ""
    return (f" On IOI-style prompts (clean logit(IO) - logit(S) = {i['clean_logit_diff']:+.2f}; > 0 means the "
            f"model prefers IO), patching c moves it most at '{i['peak_token']}' "
            f"(layer {i['peak_layer']}, {i['peak_logit_diff']:+.2f}; full corruption {i['corrupt_logit_diff']:+.2f}); "
            f"tokens by effect: {', '.join(i['tokens_by_effect'])} (the paper: the tokens after IO "
            f"and S, here '{i['after_name']['IO']}', '{i['after_name']['S1']}', '{i['after_name']['S2']}').")


def _motif(s: dict) -> str:
    """Whether the numbers show the paper's circuit: x[A1], x[B1] -> conv -> c[B1+1] -> state."""
    xp = s["conv_in_peak_position"]
    if s["ssm_in_peak_position"] == "B1+1" and xp.get(B_) == "B1" and xp.get(A_) == "A1":
        return ("As in the paper's Mamba-130m, the short convolution merges A (x at A1) and B (x at B1) "
                "into the SSM input one token after B, which writes them into the key layer's state.")
    return ("This differs from the paper's Mamba-130m, where c peaks at B1+1 and x at A1 (A') and "
            "B1 (B').")


def describe_neox(s: dict) -> str:
    """One paragraph stating the GPT-NeoX findings from a ``summarise_neox`` summary (+ ``model``)."""
    p, i = s["previous_token_head"], s["induction_head"]
    return (f"{s['model']}: previous-token head {p['name']} (attention to the previous token "
            f"{p['prev_token_score']:.2f}; patching it from [A'][B]...[A] changes B's logit by "
            f"{p['logit_diff'].get(A_, float('nan')):+.2f}) and induction head {i['name']} "
            f"(attention to the token after the earlier occurrence {i['induction_score']:.2f}; patching it "
            f"from [A][B']...[A] changes B's logit by {i['logit_diff'].get(B_, float('nan')):+.2f}). "
            f"Full corruptions: " + ", ".join(f"{c} {v:+.2f}" for c, v in s["corrupt_logit_diff"].items()) + "."
            + (f" {s['induction_heads']} heads score above 0.5 as induction heads, so one head's patch "
               "shows only part of the effect." if s.get("induction_heads", 0) > 1 else ""))
