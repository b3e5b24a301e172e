"""One-to-one matching of two feature sets, beside MPPC's many-to-one best match.

MPPC lets many features of A pick the same feature of B. Here every feature is matched at most
once: a maximum-weight bipartite matching (weights = Pearson r > 0) on the *candidate graph*,
the ``top_k`` best candidates of every feature of A in every layer of B and of every feature of
B in every layer of A, kept by the streaming pass (``row_top_*`` / ``col_top_*`` of the layer
pairs' ``.npz``, :func:`universality.compare.pearson.moments.topk_xp`). Restricting to the
candidate graph can only lower the matched weight (a lower bound of the dense matching's);
with ``top_k`` >= the number of features it is the dense matching.

Solved per layer pair and across all layers, on a sparse graph (SciPy's LAPJVsp,
``min_weight_full_bipartite_matching``) made to admit unmatched features: every feature of A
gets a private dummy partner, every feature of B too, and the dummies of each candidate edge may
pair up; with cost ``2 - r`` on real edges and 2 on dummy edges every full matching costs
``2 (n_A + n_B) - sum of matched r``, so the cheapest is the maximum-weight matching.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

__all__ = ["max_weight_matching", "candidate_edges", "solve", "mutual_best", "many_to_one"]


def max_weight_matching(n_left: int, n_right: int, rows, cols, weights) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-weight matching of a bipartite graph with edges ``(rows[e], cols[e])`` of weight
    ``weights[e]`` in (0, 1] (larger = better; duplicate edges are not allowed).

    Returns ``mate`` [n_left] int64 (the matched right node, -1 if none) and ``weight``
    [n_left] float64 (its edge's weight, NaN if none)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    w = np.asarray(weights, np.float64)
    mate, got = np.full(n_left, -1, np.int64), np.full(n_left, np.nan)
    if not len(w):
        return mate, got
    if w.min() <= 0 or w.max() > 1:
        raise ValueError("edge weights must lie in (0, 1]")
    left, right = np.arange(n_left), np.arange(n_right)
    # rows: A nodes, then B's dummies; columns: B nodes, then A's dummies
    r = np.concatenate([rows, left, n_left + right, n_left + cols])
    c = np.concatenate([cols, n_right + left, right, n_right + rows])
    cost = np.concatenate([2.0 - w, np.full(n_left + n_right + len(w), 2.0)])
    n = n_left + n_right
    graph = sp.csr_matrix((cost, (r, c)), shape=(n, n))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < n_left) & (col_ind < n_right)
    mate[row_ind[real]] = col_ind[real]
    lookup = dict(zip(zip(rows.tolist(), cols.tolist()), w.tolist()))
    got[row_ind[real]] = [lookup[(i, j)] for i, j in zip(row_ind[real].tolist(), col_ind[real].tolist())]
    return mate, got


def candidate_edges(result: dict, min_r: float = 0.0) -> pd.DataFrame:
    """The candidate edges of one layer pair from its result (``row_top_*``, ``col_top_*``):
    columns ``i`` (A feature), ``j`` (B feature), ``r``; each edge once, ``r > min_r``."""
    if "row_top_arg" not in result:
        raise ValueError("the layer pair has no top-k candidates (pearson.top_k: rerun pearson_pair)")
    ri, rv = np.asarray(result["row_top_arg"]), np.asarray(result["row_top_val"], np.float64)
    ci, cv = np.asarray(result["col_top_arg"]), np.asarray(result["col_top_val"], np.float64)
    fwd = pd.DataFrame({"i": np.repeat(np.arange(ri.shape[0]), ri.shape[1]), "j": ri.ravel(), "r": rv.ravel()})
    rev = pd.DataFrame({"i": ci.ravel(), "j": np.repeat(np.arange(ci.shape[0]), ci.shape[1]), "r": cv.ravel()})
    edges = pd.concat([fwd, rev], ignore_index=True)
    edges = edges[(edges["i"] >= 0) & (edges["j"] >= 0) & (edges["r"] > min_r)]
    return edges.drop_duplicates(["i", "j"]).reset_index(drop=True)


def solve(pair_results: dict[tuple[int, int], dict], thresholds) -> tuple[pd.DataFrame, dict]:
    """One-to-one matchings of a comparison from ``{(la, lb): result}``.

    Returns the across-layer matching as a table (one row per feature of A: ``layer, feature,
    match_layer, match_feature, r``; unmatched: -1 / NaN) and the numbers: ``share_matched``
    ``{t: share of A's valid features matched with r > t}`` (also of B's), per layer pair
    (``per_pair``: ``{"la,lb": {t: share of la's valid features matched within lb}}``)."""
    layers_a = sorted({la for la, _ in pair_results})
    layers_b = sorted({lb for _, lb in pair_results})
    first_b = {la: pair_results[(la, layers_b[0])] for la in layers_a}
    first_a = {lb: pair_results[(layers_a[0], lb)] for lb in layers_b}
    size_a = {la: len(first_b[la]["valid_a"]) for la in layers_a}
    size_b = {lb: len(first_a[lb]["valid_b"]) for lb in layers_b}
    off_a = dict(zip(layers_a, np.cumsum([0] + [size_a[l] for l in layers_a])[:-1]))
    off_b = dict(zip(layers_b, np.cumsum([0] + [size_b[l] for l in layers_b])[:-1]))
    valid_a = np.concatenate([np.asarray(first_b[l]["valid_a"], bool) for l in layers_a])
    valid_b = np.concatenate([np.asarray(first_a[l]["valid_b"], bool) for l in layers_b])
    parts, per_pair = [], {}
    for (la, lb), res in sorted(pair_results.items()):
        e = candidate_edges(res)
        mate, w = max_weight_matching(size_a[la], size_b[lb], e["i"], e["j"], e["r"])
        n_valid = int(np.asarray(res["valid_a"], bool).sum())
        per_pair[f"{la},{lb}"] = {str(t): float((w > t).sum() / n_valid) if n_valid else float("nan")
                                  for t in thresholds}
        parts.append(pd.DataFrame({"u": e["i"] + off_a[la], "v": e["j"] + off_b[lb], "r": e["r"]}))
    edges = pd.concat(parts, ignore_index=True)
    n_a, n_b = len(valid_a), len(valid_b)
    mate, w = max_weight_matching(n_a, n_b, edges["u"], edges["v"], edges["r"])
    lay_a = np.repeat(layers_a, [size_a[l] for l in layers_a])
    feat_a = np.concatenate([np.arange(size_a[l]) for l in layers_a])
    lay_b = np.repeat(layers_b, [size_b[l] for l in layers_b])
    feat_b = np.concatenate([np.arange(size_b[l]) for l in layers_b])
    matched = mate >= 0
    table = pd.DataFrame({"layer": lay_a, "feature": feat_a,
                          "match_layer": np.where(matched, lay_b[np.maximum(mate, 0)], -1),
                          "match_feature": np.where(matched, feat_b[np.maximum(mate, 0)], -1), "r": w})
    numbers = {
        "features_a": int(n_a), "features_b": int(n_b), "valid_a": int(valid_a.sum()),
        "valid_b": int(valid_b.sum()), "candidate_edges": int(len(edges)), "matched": int(matched.sum()),
        "mean_r_matched": float(np.nanmean(w)) if matched.any() else float("nan"),
        "share_matched": {str(t): float((w > t).sum() / max(valid_a.sum(), 1)) for t in thresholds},
        "share_matched_of_b": {str(t): float((w > t).sum() / max(valid_b.sum(), 1)) for t in thresholds},
        "per_pair": per_pair,
    }
    return table, numbers


def mutual_best(forward: pd.DataFrame, reverse: pd.DataFrame) -> dict:
    """Pairs that are each other's MPPC best match (across all layers): count, and share of A's
    and of B's features with a match."""
    f = forward[forward["match_layer"] >= 0]
    r = reverse[reverse["match_layer"] >= 0]
    back = f.merge(r, left_on=["match_layer", "match_feature"], right_on=["layer", "feature"],
                   suffixes=("", "_b"), validate="many_to_one")
    mutual = back[(back["match_layer_b"] == back["layer"]) & (back["match_feature_b"] == back["feature"])]
    return {"pairs": int(len(mutual)), "share_a": float(len(mutual) / max(len(f), 1)),
            "share_b": float(len(mutual) / max(len(r), 1))}


def many_to_one(forward: pd.DataFrame, sizes=(1, 2, 3, 4, 5)) -> dict:
    """How MPPC's best matches pile up: the number of distinct B features matched, the share of
    A's matched features whose match is shared with another, and ``by_group_size`` (share of A's
    matched features in groups of ``s`` A features with one B match; the last bin is ``>= s``)."""
    f = forward[forward["match_layer"] >= 0]
    if not len(f):
        return {"matched_a": 0, "distinct_b": 0, "share_shared": float("nan"), "max_group": 0,
                "by_group_size": {}}
    group = f.groupby(["match_layer", "match_feature"])["feature"].transform("size").to_numpy()
    hist = {str(s): float((group == s).mean()) for s in sizes[:-1]}
    hist[f">={sizes[-1]}"] = float((group >= sizes[-1]).mean())
    return {"matched_a": int(len(f)), "distinct_b": int(f.groupby(["match_layer", "match_feature"]).ngroups),
            "share_shared": float((group > 1).mean()), "max_group": int(group.max()), "by_group_size": hist}
