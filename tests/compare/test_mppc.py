import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from universality.sae import features
from universality.compare import mppc
from universality.compare import pearson
from universality.core import store
from universality.sae.model import SAE


def reference_pearson(x, y):
    """Float64 centred two-pass Pearson of every column of x with every column of y (NaN if constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = np.full((x.shape[1], y.shape[1]), np.nan)
    for i in range(x.shape[1]):
        for j in range(y.shape[1]):
            a, b = x[:, i] - x[:, i].mean(), y[:, j] - y[:, j].mean()
            den = np.sqrt((a * a).sum() * (b * b).sum())
            if den > 0:
                out[i, j] = (a * b).sum() / den
    return out


def make_acts(path, n_sae, n_eval, d, seed):
    rng = np.random.default_rng(seed)
    arr = store.create_array(path, (n_sae + n_eval, d), "float32", chunk_rows=64,
                             attrs={"segments": {"sae": [0, n_sae], "eval": [n_sae, n_sae + n_eval]}})
    arr[:] = rng.normal(size=(n_sae + n_eval, d)).astype(np.float32)
    store.seal(path)  # as the activations rule writes it
    return arr


def make_sae(path, d, f, seed):
    sae = SAE.initialized(d, f, seed)
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # sparse-ish codes
    sae.save(path)
    return SAE.load(path)


def test_encode_matches_dense_sae(tmp_path):
    acts = make_acts(tmp_path / "a.zarr", 50, 300, 8, 0)
    sae = make_sae(tmp_path / "sae", 8, 32, 1)
    info = features.encode(str(tmp_path / "sae"), str(tmp_path / "a.zarr"), str(tmp_path / "f.zarr"), chunk_rows=70)
    want = sae.encode(torch.from_numpy(acts[50:])).numpy()
    csr = features.CSRStore(str(tmp_path / "f.zarr"))
    got = sp.vstack(list(csr.chunks(37))).toarray()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert info["nnz"] == int((want > 0).sum()) and csr.shape == (300, 32)
    np.testing.assert_array_equal(csr.group["counts"][:], (want > 0).sum(0))


@pytest.mark.parametrize("shift", [0, 113])
def test_pair_matches_reference(tmp_path, shift):
    make_acts(tmp_path / "a.zarr", 10, 400, 6, 0)
    make_acts(tmp_path / "b.zarr", 10, 400, 6, 1)
    make_sae(tmp_path / "sa", 6, 20, 2)
    make_sae(tmp_path / "sb", 6, 24, 3)
    for s, a in (("sa", "a"), ("sb", "b")):
        features.encode(str(tmp_path / s), str(tmp_path / f"{a}.zarr"), str(tmp_path / f"{a}f.zarr"))
    res = mppc.pair(str(tmp_path / "af.zarr"), str(tmp_path / "bf.zarr"), "sae", shift, str(tmp_path / "p.npz"),
                    chunk_rows=64, backend="cpu")
    x = features.CSRStore(str(tmp_path / "af.zarr")).rows(0, 400).toarray()
    y = np.roll(features.CSRStore(str(tmp_path / "bf.zarr")).rows(0, 400).toarray(), -shift, axis=0)
    ref = reference_pearson(x, y)
    row_ok = ~np.isnan(ref).all(1)
    np.testing.assert_allclose(res["row_max"][row_ok], np.nanmax(ref[row_ok], 1), atol=1e-5)
    assert np.isnan(res["row_max"][~row_ok]).all() and (res["row_arg"][~row_ok] == -1).all()
    back = pearson.load_result(tmp_path / "p.npz")
    np.testing.assert_array_equal(back["row_arg"], res["row_arg"])


def test_dense_neuron_pair_matches_reference(tmp_path):
    a = make_acts(tmp_path / "a.zarr", 5, 300, 7, 0)
    b = make_acts(tmp_path / "b.zarr", 5, 300, 9, 1)
    a[:, 3] = 1000.0 + 0.01 * np.arange(305)  # large offset, small variance
    b[:, 2] = 4.0  # constant: excluded
    store.seal(tmp_path / "a.zarr"), store.seal(tmp_path / "b.zarr")  # changed after make_acts sealed them
    res = mppc.pair(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "neuron", 0, str(tmp_path / "p.npz"),
                    chunk_rows=50, backend="cpu")
    ref = reference_pearson(a[5:], b[5:])
    np.testing.assert_allclose(res["row_max"], np.nanmax(ref, 1), atol=1e-5)
    assert res["excluded_b"] == 1 and np.isnan(res["col_max"][2])


def reference_reduce(pairs, n_a, layers_a, layers_b):
    rows = []
    for la in layers_a:
        for i in range(n_a):
            best = (np.nan, -1, -1)
            for lb in layers_b:
                v = pairs[(la, lb)]["row_max"][i]
                if not np.isnan(v) and (np.isnan(best[0]) or v > best[0]):
                    best = (v, lb, pairs[(la, lb)]["row_arg"][i])
            rows.append((la, i, *best))
    return rows


def test_reduce_matches_reference():
    rng = np.random.default_rng(0)
    pairs = {}
    for la in (0, 1):
        for lb in (0, 1, 2):
            row = rng.uniform(-1, 1, 5)
            row[0] = np.nan  # feature 0 excluded everywhere
            pairs[(la, lb)] = {"row_max": row, "row_arg": rng.integers(0, 9, 5),
                               "col_max": rng.uniform(-1, 1, 9), "col_arg": rng.integers(0, 5, 9)}
    fwd, rev = mppc.reduce(pairs)
    ref = reference_reduce(pairs, 5, (0, 1), (0, 1, 2))
    for (_, r), (la, i, v, ml, mf) in zip(fwd.iterrows(), ref):
        assert (r.layer, r.feature) == (la, i)
        if np.isnan(v):
            assert np.isnan(r.mppc) and r.match_layer == -1 and r.match_feature == -1
        else:
            assert r.mppc == pytest.approx(v) and (r.match_layer, r.match_feature) == (ml, mf)
    assert len(rev) == 3 * 9 and set(rev.match_layer) <= {0, 1}
    s = mppc.summary(fwd)
    assert s["excluded"] == 2 and s["features"] == 10
    assert s["mean_mppc"] == pytest.approx(np.nanmean([v for *_, v, _, _ in ref]))
