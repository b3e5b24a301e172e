"""CKA, SVCCA and RSA against direct NumPy formulas on small random data, their permutation
nulls on planted structure, and the depth statistics on tables with a known answer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from universality.compare import depth, similarity


def cka_by_kernels(x, y):
    """CKA from centred Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), H K H L."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    hsic = lambda a, b: np.trace(a @ b)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def svcca_slow(x, y, dims):
    """SVD-reduce each side, then CCA by the textbook formula: eigenvalues of
    Sxx^-1 Sxy Syy^-1 Syx are the squared canonical correlations."""
    def reduce(z):
        z = z - z.mean(axis=0)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        return z @ vt[:dims].T
    a, b = reduce(x), reduce(y)
    sxx, syy, sxy = a.T @ a, b.T @ b, a.T @ b
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    ev = np.sort(np.real(np.linalg.eigvals(m)))[::-1][: min(a.shape[1], b.shape[1])]
    return float(np.sqrt(np.clip(ev, 0, 1)).mean())


def rsa_slow(x, y):
    n = x.shape[1]
    dx, dy = [], []
    for p in range(n):
        for q in range(p + 1, n):
            dx.append(1 - np.corrcoef(x[:, p], x[:, q])[0, 1])
            dy.append(1 - np.corrcoef(y[:, p], y[:, q])[0, 1])
    return stats.spearmanr(dx, dy)[0]


@pytest.mark.parametrize("seed", range(3))
def test_measures_equal_direct_formulas(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(60, 7)) + 3, rng.normal(size=(60, 5))
    y[:, :3] += x[:, :3]
    assert similarity.linear_cka(x, y) == pytest.approx(cka_by_kernels(x, y), rel=1e-10)
    assert similarity.svcca(x, y, 4) == pytest.approx(svcca_slow(x, y, 4), rel=1e-8)
    assert similarity.rsa(x[:, :5], y) == pytest.approx(rsa_slow(x[:, :5], y), rel=1e-12)
    res = similarity.rsa_test(x[:, :5], y, 3, np.random.default_rng(0))
    assert res["rsa"] == pytest.approx(rsa_slow(x[:, :5], y), rel=1e-12)


@pytest.mark.parametrize("rank", [None, 3])
def test_svcca_gram_path_equals_the_svd_textbook_formula(rank):
    """Many columns (the Gram-matrix reduction), full rank and rank below ``dims`` (the SVD
    fallback): the same SVCCA as the textbook formula, and the basis orthonormal."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 30)) @ rng.normal(size=(30, 30)) + 2
    y = np.hstack([x[:, :10] + rng.normal(size=(400, 10)), rng.normal(size=(400, 20))])
    if rank:
        x = x[:, :rank] @ rng.normal(size=(rank, 30))
    u = similarity._reduce(x, 6)
    assert u.shape[1] == (rank or 6)
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-10)
    want = svcca_slow(x, y, 6) if not rank else None
    got = similarity.svcca(x, y, 6)
    if want is not None:
        assert got == pytest.approx(want, rel=1e-8)
    else:  # the textbook reduction keeps 6 directions of a rank-3 matrix; ours its 3
        ref = np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :3]
        uy = similarity._reduce(y, 6)
        assert got == pytest.approx(np.linalg.svd(ref.T @ uy, compute_uv=False).mean(), rel=1e-10)


def test_cka_invariances_and_null():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert similarity.linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0)  # rotation, scale, shift
    shared = similarity.cka_test(x, x @ q + 0.5 * rng.normal(size=x.shape), 50, np.random.default_rng(0))
    assert shared["cka"] > 0.6 and shared["p_value"] == pytest.approx(1 / 51)
    noise = similarity.cka_test(x, rng.normal(size=(500, 4)), 50, np.random.default_rng(0))
    assert noise["p_value"] > 0.01 and noise["cka"] < 0.05


def test_rsa_and_svcca_nulls_on_planted_pairs():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 30))  # 30 items with structure
    x, y = base + 0.1 * rng.normal(size=base.shape), base + 0.1 * rng.normal(size=base.shape)
    r = similarity.rsa_test(x, y, 99, np.random.default_rng(0))
    assert r["rsa"] > 0.9 and r["p_value"] == pytest.approx(0.01) and abs(r["null_mean"]) < 0.3
    s = similarity.svcca_test(x, y, 3, 99, np.random.default_rng(0))
    assert s["svcca"] > 0.9 and s["p_value"] == pytest.approx(0.01)


def table(pairs):
    layer, match = zip(*pairs)
    n = len(pairs)
    return pd.DataFrame({"layer": layer, "feature": range(n), "mppc": 0.5, "match_layer": match, "match_feature": 0})


def test_depth_on_the_stretched_diagonal():
    # A has 3 layers, B 6: feature of layer l matches layer 2l or 2l+1 (the diagonal), one excluded
    t = table([(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, -1)])
    d = depth.depth_stats(t, [0, 1, 2], list(range(6)))
    assert d["matched"] == 6 and d["spearman"] == pytest.approx(stats.spearmanr([0, 0, 1, 1, 2, 2], range(6))[0])
    assert d["slope"] == pytest.approx(2.0) and d["relative_slope"] == pytest.approx(1.0)
    assert d["near_diagonal"] == 1.0 and d["near_diagonal_chance"] < 1.0
    flat = depth.depth_stats(table([(0, 3), (1, 3), (2, 3)]), [0, 1, 2], list(range(6)))
    assert np.isnan(flat["spearman"]) and flat["near_diagonal"] == pytest.approx(1 / 3)


def test_app_c_numbers():
    # first A layer matches B layers 0 and 1; first two A layers reach B layer 3
    t = table([(0, 0)] * 4 + [(0, 1)] + [(1, 3)] * 5 + [(2, 5)] * 5)
    rows = depth.app_c(t, [0, 1, 2], list(range(6)), coverage=0.8)
    assert rows[0] == {"first_src_layers": 1, "matches": 5, "dst_layers_needed": 1, "proportional": 2,
                       "share_in_needed": 0.8, "share_in_proportional": 1.0}
    assert rows[1]["dst_layers_needed"] == 4 and rows[1]["proportional"] == 4
    assert rows[2]["dst_layers_needed"] == 6 and rows[2]["share_in_proportional"] == 1.0
