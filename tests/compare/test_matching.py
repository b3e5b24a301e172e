"""Top-k candidates (vs a dense stable sort), the one-to-one matching (vs brute force, and on
planted structure), mutual best pairs and MPPC's many-to-one distribution."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from universality.compare import matching, mppc
from universality.compare.pearson import PearsonAccumulator
from universality.compare.pearson import moments


def sparse_acts(n_tok, n_feat, rng, density=0.2):
    x = rng.lognormal(size=(n_tok, n_feat)) * (rng.random((n_tok, n_feat)) < density)
    return x


def ref_topk(r: np.ndarray, k: int):
    """Dense reference: a stable sort of -r per row (NaN = excluded, last), first k."""
    m = np.where(np.isnan(r), -np.inf, r)
    idx = np.argsort(-m, axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(m, idx, axis=1)
    return np.where(np.isfinite(val), val, np.nan), np.where(np.isfinite(val), idx, -1)


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_topk_matches_a_dense_sort_and_keeps_the_maxima(k):
    rng = np.random.default_rng(0)
    a, b = sparse_acts(400, 23, rng), sparse_acts(400, 31, rng)
    a[:, 5] = 0.0  # never fires: excluded
    b[:, 7] = b[:, 3]  # duplicate column: exact ties resolve to the lower index
    b[:, 9] = 2.0  # constant: excluded
    acc = PearsonAccumulator(23, 31, mode="sparse")
    for s in range(0, 400, 64):
        acc.update(sp.csr_matrix(a[s:s + 64]), sp.csr_matrix(b[s:s + 64]))
    plain, res = acc.result(), acc.result(top_k=k)
    r = acc.pearson_matrix()
    for key in ("row_max", "row_arg", "col_max", "col_arg"):
        assert np.array_equal(plain[key], res[key], equal_nan=True)  # bitwise unchanged
    for side, mat in (("row", r), ("col", r.T)):
        val, idx = ref_topk(mat, k)
        kk = min(k, mat.shape[1])
        assert np.array_equal(res[f"{side}_top_arg"][:, :kk], idx)
        np.testing.assert_allclose(res[f"{side}_top_val"][:, :kk], val, rtol=0, atol=1e-6)
        assert (res[f"{side}_top_arg"][:, kk:] == -1).all()
    assert np.array_equal(res["row_top_arg"][:, 0], res["row_arg"])
    assert (res["row_top_arg"][5] == -1).all() and (res["col_top_arg"][9] == -1).all()


def test_topk_column_merge_across_row_blocks():
    rng = np.random.default_rng(1)
    sxy = rng.normal(size=(50, 20))
    side = lambda n: {"sx": np.zeros(n), "inv": np.ones(n), "valid": np.ones(n, bool)}
    full = moments.topk_xp(np, sxy, 1.0, side(50), side(20), 4, block_rows=50)
    blocked = moments.topk_xp(np, sxy, 1.0, side(50), side(20), 4, block_rows=7)
    for x, y in zip(full, blocked):
        assert np.array_equal(x, y)


def brute_force(w: np.ndarray) -> float:
    """Maximum total weight of a matching in the dense weight matrix (0 = no edge)."""
    n = max(w.shape)
    pad = np.zeros((n, n))
    pad[: w.shape[0], : w.shape[1]] = w
    return max(sum(pad[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("seed", range(12))
def test_matching_equals_brute_force_on_tiny_graphs(seed):
    rng = np.random.default_rng(seed)
    n_l, n_r = rng.integers(1, 6, size=2)
    w = np.round(rng.random((n_l, n_r)), 2) * (rng.random((n_l, n_r)) < 0.6)
    rows, cols = np.nonzero(w)
    mate, got = matching.max_weight_matching(n_l, n_r, rows, cols, w[rows, cols])
    m = mate[mate >= 0]
    assert len(set(m.tolist())) == len(m)  # one-to-one
    assert all(w[i, mate[i]] > 0 and got[i] == w[i, mate[i]] for i in np.flatnonzero(mate >= 0))
    assert np.nansum(got) == pytest.approx(brute_force(w), abs=1e-9)


def test_matching_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        matching.max_weight_matching(2, 2, [0], [1], [1.5])


def planted(rng, n_tok=3000, shared=12, extra_a=8, extra_b=10):
    """A and B share ``shared`` features (B's copies permuted, slightly noisy); the rest are
    independent. Returns a, b, and perm with b[:, perm[s]] ~ a[:, s] for s < shared."""
    base = sparse_acts(n_tok, shared, rng, 0.1)
    a = np.hstack([base, sparse_acts(n_tok, extra_a, rng, 0.1)])
    noisy = base * (1 + 0.05 * rng.random(base.shape))
    b = np.hstack([noisy, sparse_acts(n_tok, extra_b, rng, 0.1)])
    # several A features collapse onto one B feature under MPPC: duplicate A's shared 0 twice
    a[:, shared] = base[:, 0] * (1 + 0.3 * rng.random(n_tok))
    perm = rng.permutation(b.shape[1])
    return a, b[:, np.argsort(perm)], perm


def test_planted_shared_subset_is_recovered_one_to_one():
    rng = np.random.default_rng(3)
    a, b, perm = planted(rng)
    half = a.shape[1] // 2, b.shape[1] // 2
    results = {}
    layers_a = {0: a[:, : half[0]], 1: a[:, half[0]:]}
    layers_b = {0: b[:, : half[1]], 1: b[:, half[1]:]}
    for la, xa in layers_a.items():
        for lb, xb in layers_b.items():
            acc = PearsonAccumulator(xa.shape[1], xb.shape[1], mode="sparse")
            acc.update(sp.csr_matrix(xa), sp.csr_matrix(xb))
            results[(la, lb)] = acc.result(top_k=3)
    table, numbers = matching.solve(results, [0.5, 0.9])
    glob_a = table["feature"] + np.where(table["layer"] == 1, half[0], 0)
    glob_b = table["match_feature"] + np.where(table["match_layer"] == 1, half[1], 0)
    pairs = dict(zip(glob_a[table["match_layer"] >= 0], glob_b[table["match_layer"] >= 0]))
    for s in range(12):
        assert pairs[s] == perm[s]  # every planted pair, one to one
    strong = table[table["r"] > 0.9]
    assert len(strong) == 12  # and nothing else is strongly matched
    assert numbers["share_matched"]["0.9"] == pytest.approx(12 / a.shape[1])
    # MPPC, in contrast, lets A's duplicate pick B's copy of shared feature 0 too
    forward, reverse = mppc.reduce(results)
    m2o = matching.many_to_one(forward)
    assert m2o["max_group"] >= 2 and m2o["share_shared"] > 0
    mutual = matching.mutual_best(forward, reverse)
    assert mutual["pairs"] >= 11  # the planted pairs (one may lose to the duplicate), plus weak chance pairs


def test_many_to_one_and_mutual_best_on_a_small_table():
    fwd = pd.DataFrame({"layer": [0, 0, 0, 1], "feature": [0, 1, 2, 0], "mppc": [0.9, 0.8, np.nan, 0.7],
                        "match_layer": [1, 1, -1, 0], "match_feature": [3, 3, -1, 1]})
    rev = pd.DataFrame({"layer": [0, 1], "feature": [1, 3], "mppc": [0.7, 0.9],
                        "match_layer": [1, 0], "match_feature": [0, 0]})
    m = matching.many_to_one(fwd)
    assert m == {"matched_a": 3, "distinct_b": 2, "share_shared": pytest.approx(2 / 3), "max_group": 2,
                 "by_group_size": {"1": pytest.approx(1 / 3), "2": pytest.approx(2 / 3), "3": 0.0, "4": 0.0,
                                   ">=5": 0.0}}
    assert matching.mutual_best(fwd, rev) == {"pairs": 2, "share_a": pytest.approx(2 / 3), "share_b": 1.0}
