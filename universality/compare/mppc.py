"""Comparisons: Pearson sums per layer pair, and their reduction to MPPC tables.

A comparison (``config["comparisons"][name]``) pairs model A with model B:
- ``kind: sae``: SAE features of A (seed ``seed_a``) against SAE features of B (``seed_b``);
- ``kind: neuron``: the dense neuron-basis site of A against that of B (the baseline);
- ``shift: k`` > 0 pairs token t of A with token (t + k) mod N of B: the permutation null.

MPPC of a feature i of A is the max over every feature j of every layer of B of the Pearson
correlation of their activations over the eval tokens, with its argmax (layer, feature).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universality.compare import pearson
from universality.sae.readers import CSRStore, DenseEval


def open_source(path: str, kind: str):
    return CSRStore(path) if kind == "sae" else DenseEval(path)


def eval_token_hash(attrs: dict) -> str | None:
    """The hash of the eval token set a store's rows come from (None if it does not record one)."""
    return (attrs.get("token_sets") or {}).get("eval")


def check_same_tokens(a_path: str, a_attrs: dict, b_path: str, b_attrs: dict) -> None:
    """Both sides of a layer pair must be rows of the same eval token set."""
    ha, hb = eval_token_hash(a_attrs), eval_token_hash(b_attrs)
    if ha is not None and hb is not None and ha != hb:
        raise ValueError(f"eval token sets differ: {a_path} has rows of token set {ha}, {b_path} of {hb} "
                         "(rerun the activations and features of the stale side)")


def pair(a_path: str, b_path: str, kind: str, shift: int, out: str, *, chunk_rows: int = 8192,
         backend: str = "auto", meta: dict | None = None, top_k: int = 0) -> dict:
    """Stream one layer pair; write row/col max and argmax (``pearson/{comparison}/A{la}_B{lb}.npz``),
    and with ``top_k`` > 0 the ``top_k`` best candidates per feature in both directions (the
    one-to-one matching's graph, :mod:`universality.compare.matching`)."""
    a, b = open_source(a_path, kind), open_source(b_path, kind)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"token counts differ: {a_path} has {a.shape[0]} rows, {b_path} has {b.shape[0]}")
    check_same_tokens(a_path, a.attrs, b_path, b.attrs)
    if shift and shift % a.shape[0] == 0:
        raise ValueError(f"shift {shift} is a multiple of the {a.shape[0]} eval tokens: the 'null' would pair "
                         "every token with itself (choose a shift that is not 0 mod the token count)")
    acc = pearson.PearsonAccumulator(a.shape[1], b.shape[1], backend=backend,
                                     mode="sparse" if kind == "sae" else "dense")
    b_chunks = pearson.rolled_chunks(b, shift, chunk_rows) if shift else b.chunks(chunk_rows)
    for a_chunk, b_chunk in zip(a.chunks(chunk_rows), b_chunks):
        acc.update(a_chunk, b_chunk)
    result = acc.result(top_k=top_k)
    pearson.save_result(out, result, **(meta or {}))
    return result


def reduce(pair_results: dict[tuple[int, int], dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Forward (A->B) and reverse (B->A) MPPC tables from ``{(la, lb): result}``.

    Each table has one row per feature: ``layer, feature, mppc, match_layer, match_feature``;
    excluded features (never fire or constant on the eval tokens) have NaN mppc and -1 matches.
    """
    layers_a = sorted({la for la, _ in pair_results})
    layers_b = sorted({lb for _, lb in pair_results})

    def table(side_layers, other_layers, key_of, max_key, arg_key):
        rows = []
        for layer in side_layers:
            maxes = np.stack([np.asarray(pair_results[key_of(layer, o)][max_key], dtype=np.float64) for o in other_layers])
            args = np.stack([np.asarray(pair_results[key_of(layer, o)][arg_key]) for o in other_layers])
            valid = ~np.isnan(maxes).all(axis=0)
            best = np.where(valid, np.nanargmax(np.where(np.isnan(maxes), -np.inf, maxes), axis=0), -1)
            n = maxes.shape[1]
            cols = np.arange(n)
            rows.append(pd.DataFrame({
                "layer": layer,
                "feature": cols,
                "mppc": np.where(valid, maxes[np.maximum(best, 0), cols], np.nan),
                "match_layer": np.where(valid, np.asarray(other_layers)[np.maximum(best, 0)], -1),
                "match_feature": np.where(valid, args[np.maximum(best, 0), cols], -1),
            }))
        return pd.concat(rows, ignore_index=True)

    forward = table(layers_a, layers_b, lambda la, lb: (la, lb), "row_max", "row_arg")
    reverse = table(layers_b, layers_a, lambda lb, la: (la, lb), "col_max", "col_arg")
    return forward, reverse


def summary(forward: pd.DataFrame) -> dict:
    """Counts and the mean MPPC of the features that have one."""
    m = forward["mppc"]
    return {"features": int(len(m)), "excluded": int(m.isna().sum()), "mean_mppc": float(m.mean()),
            "share_above_0.95": float((m.dropna() > 0.95).mean()) if m.notna().any() else float("nan")}
