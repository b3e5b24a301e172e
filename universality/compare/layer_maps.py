"""Depth maps of the similarity baselines (:mod:`universality.compare.similarity`) for one
comparison: one row per layer pair (A layer ``la``, B layer ``lb``), read from the stores.

* :func:`cka_table`: linear CKA of the residual streams (``activations/{model}/resid/L{l}.zarr``,
  the first ``tokens`` eval rows) of every layer pair;
* :func:`matched_table`: SVCCA and RSA of the activations of the one-to-one matched SAE
  features (:mod:`universality.compare.matching`) of every layer pair, from the feature stores.

Permutations are seeded per layer pair (``[seed, la, lb]``): rerunning one pair gives the same
numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universality.compare import similarity
from universality.sae.readers import CSRStore, DenseEval


def _rng(seed: int, la: int, lb: int) -> np.random.Generator:
    return np.random.default_rng([seed, la, lb])


def cka_table(a_stores: dict[int, str], b_stores: dict[int, str], *, tokens: int, permutations: int,
              seed: int) -> pd.DataFrame:
    """``{layer: store path}`` of each side -> ``la, lb, cka, null_mean, null_p99, p_value,
    permutations, tokens``."""
    def read(path):
        src = DenseEval(path)
        return src[0:min(tokens, src.shape[0])].astype(np.float64)

    xs = {l: read(p) for l, p in a_stores.items()}
    ys = {l: read(p) for l, p in b_stores.items()}
    rows = []
    for la, x in xs.items():
        for lb, y in ys.items():
            n = min(len(x), len(y))
            res = similarity.cka_test(x[:n], y[:n], permutations, _rng(seed, la, lb))
            rows.append({"la": la, "lb": lb, **res, "tokens": n})
    return pd.DataFrame(rows)


def _columns(store: CSRStore, features: np.ndarray, tokens: int) -> np.ndarray:
    return store.rows(0, min(tokens, store.shape[0]))[:, features].toarray().astype(np.float64)


def matched_table(matches: pd.DataFrame, a_stores: dict[int, str], b_stores: dict[int, str], *,
                  tokens: int, dims: int, rsa_features: int, permutations: int, seed: int) -> pd.DataFrame:
    """SVCCA and RSA per layer pair over its one-to-one matched pairs (``matches``: the
    matching table, ``layer, feature, match_layer, match_feature, r``). Pairs whose feature is
    constant on the tokens read are left out; RSA takes the ``rsa_features`` pairs of highest r.
    Columns: ``la, lb, pairs, svcca, svcca_p, svcca_null_mean, rsa, rsa_p, rsa_null_mean``."""
    rows = []
    for la, a_path in a_stores.items():
        for lb, b_path in b_stores.items():
            m = matches[(matches["layer"] == la) & (matches["match_layer"] == lb)].sort_values("r", ascending=False)
            row = {"la": la, "lb": lb, "pairs": 0, "svcca": np.nan, "svcca_p": np.nan, "svcca_null_mean": np.nan,
                   "rsa": np.nan, "rsa_p": np.nan, "rsa_null_mean": np.nan}
            if len(m):
                x = _columns(CSRStore(a_path), m["feature"].to_numpy(), tokens)
                y = _columns(CSRStore(b_path), m["match_feature"].to_numpy(), tokens)
                live = (np.ptp(x, axis=0) > 0) & (np.ptp(y, axis=0) > 0)
                x, y = x[:, live], y[:, live]
                row["pairs"] = int(live.sum())
            if row["pairs"] >= 3:
                rng = _rng(seed, la, lb)
                s = similarity.svcca_test(x, y, dims, permutations, rng)
                r = similarity.rsa_test(x[:, :rsa_features], y[:, :rsa_features], permutations, rng)
                row.update(svcca=s["svcca"], svcca_p=s["p_value"], svcca_null_mean=s["null_mean"],
                           rsa=r["rsa"], rsa_p=r["p_value"], rsa_null_mean=r["null_mean"])
            rows.append(row)
    return pd.DataFrame(rows)
