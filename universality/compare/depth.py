"""Depth statistics of the best matches: the paper's depth specialisation (Figs. 3c, 10) and its
App. C claims as numbers, from one direction's MPPC table.

A table has one row per feature: ``layer, feature, mppc, match_layer, match_feature`` (excluded
features: ``match_layer = -1``). With ``n_src`` layers on the feature's side and ``n_dst`` on
the match's, a layer ``l``'s relative depth is ``(l + 0.5) / n``, and the *stretched diagonal*
maps source layer ``l`` to ``(l + 0.5) n_dst / n_src - 0.5`` (Pythia's 12 layers against
Mamba's 24: ``l -> 2 l + 0.5``, the paper's "layer l matches about layer 2l").
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["depth_stats", "app_c", "stretched_diagonal"]


def stretched_diagonal(layer, n_src: int, n_dst: int):
    """The destination layer (fractional) at the same relative depth as source ``layer``."""
    return (np.asarray(layer, dtype=np.float64) + 0.5) * n_dst / n_src - 0.5


def _positions(layers: list[int], values) -> np.ndarray:
    """Index of each layer value in the sorted list ``layers`` (layers may be a subset)."""
    return np.searchsorted(np.asarray(sorted(layers)), np.asarray(values))


def depth_stats(table: pd.DataFrame, src_layers: list[int], dst_layers: list[int]) -> dict:
    """Spearman rho of a feature's relative depth with its match's, the OLS slope of match layer
    on feature layer (layer units; ``relative_slope`` 1 = the stretched diagonal), the share of
    matches within one layer of the stretched diagonal and that share's chance level (the
    layers' marginals independent), over the features that have a match.

    ``src_layers`` / ``dst_layers``: the stored layers of each side (positions count, so a
    subset of layers is handled as consecutive)."""
    valid = table[table["match_layer"] >= 0]
    n_src, n_dst = len(src_layers), len(dst_layers)
    out = {"matched": int(len(valid)), "layers_src": n_src, "layers_dst": n_dst}
    if len(valid) < 2:
        return {**out, **{k: float("nan") for k in ("spearman", "p_value", "slope", "intercept",
                                                     "relative_slope", "near_diagonal", "near_diagonal_chance")}}
    x = _positions(src_layers, valid["layer"]).astype(np.float64)
    y = _positions(dst_layers, valid["match_layer"]).astype(np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # one layer on a side: no depth to correlate
        rho = p = slope = intercept = float("nan")
    else:
        rho, p = stats.spearmanr((x + 0.5) / n_src, (y + 0.5) / n_dst)
        slope, intercept = np.polyfit(x, y, 1)
    near = np.abs(y - stretched_diagonal(x, n_src, n_dst)) <= 1.0
    # chance: share within one layer if the match layer were drawn from its marginal, independently
    src_share = np.bincount(x.astype(int), minlength=n_src) / len(x)
    dst_share = np.bincount(y.astype(int), minlength=n_dst) / len(y)
    grid = np.abs(np.arange(n_dst)[None, :] - stretched_diagonal(np.arange(n_src), n_src, n_dst)[:, None]) <= 1.0
    chance = float((src_share[:, None] * dst_share[None, :] * grid).sum())
    return {**out, "spearman": float(rho), "p_value": float(p), "slope": float(slope),
            "intercept": float(intercept), "relative_slope": float(slope) * n_src / n_dst,
            "near_diagonal": float(near.mean()), "near_diagonal_chance": chance}


def app_c(table: pd.DataFrame, src_layers: list[int], dst_layers: list[int], coverage: float) -> list[dict]:
    """App. C as numbers: for the first ``k`` layers of the source side (k = 1..n_src), the
    smallest ``m`` such that the first ``m`` destination layers hold at least ``coverage`` of
    their matches, the proportional ``m`` (``ceil(k n_dst / n_src)``), and the share the first
    ``m`` and the proportional number of destination layers hold (the paper: the first 5 Mamba
    layers match mostly the first 2 Pythia layers, the first 7 the first 3, "one more layer than
    proportional scaling")."""
    valid = table[table["match_layer"] >= 0]
    n_src, n_dst = len(src_layers), len(dst_layers)
    x = _positions(src_layers, valid["layer"])
    y = _positions(dst_layers, valid["match_layer"])
    rows = []
    for k in range(1, n_src + 1):
        ys = y[x < k]
        prop = int(np.ceil(k * n_dst / n_src))
        if not len(ys):
            rows.append({"first_src_layers": k, "matches": 0, "dst_layers_needed": None,
                         "proportional": prop, "share_in_needed": float("nan"),
                         "share_in_proportional": float("nan")})
            continue
        cum = np.cumsum(np.bincount(ys, minlength=n_dst)) / len(ys)
        m = int(np.searchsorted(cum, coverage - 1e-12) + 1)
        rows.append({"first_src_layers": k, "matches": int(len(ys)), "dst_layers_needed": m,
                     "proportional": prop, "share_in_needed": float(cum[m - 1]),
                     "share_in_proportional": float(cum[min(prop, n_dst) - 1])})
    return rows
