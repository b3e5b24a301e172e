"""Streaming Pearson kernel vs a slow, obviously correct float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from universality.compare import pearson as P
from universality.compare.pearson import native as P_native
from universality.compare.pearson import numba_kernels as P_numba
from universality.compare.pearson import (
    PearsonAccumulator,
    aligned_chunks,
    cuda_available,
    get_xp,
    load_result,
    pearson_pair,
    roll_stream,
    rolled_chunks,
    save_result,
)

TOL = 1e-5
HAS_GPU = cuda_available()


# --------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------
def ref_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Explicit centred two-pass Pearson per pair, float64; NaN where a feature is constant."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    out = np.full((x.shape[1], y.shape[1]), np.nan)
    for i in range(x.shape[1]):
        xi = x[:, i]
        if xi.min() == xi.max():
            continue
        dx = xi - xi.mean()
        sxx = np.dot(dx, dx)
        for j in range(y.shape[1]):
            yj = y[:, j]
            if yj.min() == yj.max():
                continue
            dy = yj - yj.mean()
            out[i, j] = np.dot(dx, dy) / np.sqrt(sxx * np.dot(dy, dy))
    return out


def ref_maxima(r: np.ndarray):
    """Row/col max with the lowest index on ties; NaN / -1 when nothing is valid."""

    def one(m):
        vals = np.full(m.shape[0], np.nan)
        args = np.full(m.shape[0], -1)
        for i in range(m.shape[0]):
            row = m[i]
            if np.all(np.isnan(row)):
                continue
            best = np.nanmax(row)
            vals[i] = best
            args[i] = int(np.flatnonzero(row == best)[0])
        return vals, args

    rm, ra = one(r)
    cm, ca = one(r.T)
    return rm, ra, cm, ca


def check_against_ref(res: dict, r: np.ndarray, tol: float = TOL) -> None:
    rm, ra, cm, ca = ref_maxima(r)
    for got, want, got_arg, want_arg, mat in (
        (res["row_max"], rm, res["row_arg"], ra, r),
        (res["col_max"], cm, res["col_arg"], ca, r.T),
    ):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.max(np.abs(got[ok] - want[ok]), initial=0.0) < tol
        # argmax must agree wherever the reference maximum is unambiguous; otherwise the
        # chosen match must itself be a maximiser within tolerance
        assert np.array_equal(got_arg[~ok], want_arg[~ok])
        for i in np.flatnonzero(ok):
            row = np.where(np.isnan(mat[i]), -np.inf, mat[i])
            assert abs(row[got_arg[i]] - want[i]) < tol
            second = np.partition(row, -2)[-2] if row.size > 1 else -np.inf
            if want[i] - second > 1e-9:
                assert got_arg[i] == want_arg[i]


def sae_like(n_tokens, n_feat, mean_l0, rng, sigma=1.3) -> sp.csr_matrix:
    """Sparse non-negative activations with heavy-tailed (lognormal) feature frequencies."""
    f = np.exp(rng.normal(0.0, sigma, n_feat))
    f = np.minimum(f * mean_l0 / f.sum(), 0.6)
    counts = rng.binomial(n_tokens, f)
    feat = np.repeat(np.arange(n_feat), counts)
    tok = rng.integers(0, n_tokens, feat.size)
    key = np.unique(tok.astype(np.int64) * n_feat + feat)
    vals = rng.lognormal(0.0, 0.7, key.size).astype(np.float32)
    m = sp.csr_matrix((vals, (key // n_feat, key % n_feat)), shape=(n_tokens, n_feat))
    m.sort_indices()
    return m


def correlated(a: sp.csr_matrix, n_feat: int, rng) -> sp.csr_matrix:
    """B features that partly copy A features (so maxima are far from 0) plus noise."""
    c = a.tocoo()
    keep = rng.random(c.nnz) < 0.7
    col = rng.integers(0, n_feat, a.shape[1])[c.col[keep]]
    val = c.data[keep] * rng.lognormal(0, 0.3, keep.sum()).astype(np.float32)
    noise = sae_like(a.shape[0], n_feat, 3, rng).tocoo()
    m = sp.csr_matrix(
        (np.r_[val, noise.data], (np.r_[c.row[keep], noise.row], np.r_[col, noise.col])),
        shape=(a.shape[0], n_feat),
        dtype=np.float32,
    )
    m.sum_duplicates()
    return m


def chunks(x, size):
    for s in range(0, x.shape[0], size):
        yield x[s : s + size]


@pytest.fixture(scope="module")
def sparse_pair():
    rng = np.random.default_rng(0)
    n, fa, fb = 3000, 40, 30
    a = sae_like(n, fa, 6, rng).tolil()
    b = correlated(a.tocsr(), fb, rng).tolil()
    a[:, 3] = 0  # never fires
    a[:, 5] = 2.0  # fires on every token, constant value
    b[:, 0] = 0
    b[:, 7] = 0
    b[10:20, 7] = 1.5  # fires on a few tokens: NOT constant (implicit zeros elsewhere)
    a, b = a.tocsr(), b.tocsr()
    a.eliminate_zeros()
    b.eliminate_zeros()
    return a, b, ref_pearson(a.toarray(), b.toarray())


# --------------------------------------------------------------------------------------
# sparse path
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 37, 512, 3000])
def test_sparse_matches_reference_any_chunking(sparse_pair, chunk):
    a, b, r = sparse_pair
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", buffer_tokens=700)
    for ca, cb in zip(chunks(a, chunk), chunks(b, chunk)):
        acc.update(ca, cb)
    res = acc.result()
    assert res["mode"] == "sparse" and res["n_tokens"] == a.shape[0]
    check_against_ref(res, r)
    m = acc.pearson_matrix()
    assert np.array_equal(np.isnan(m), np.isnan(r))
    assert np.nanmax(np.abs(m - r)) < 1e-10
    assert res["excluded_a"] == 2 and res["never_fired_a"] == 1 and res["constant_a"] == 1
    assert res["excluded_b"] == 1 and res["never_fired_b"] == 1 and res["valid_b"][7]
    assert np.isnan(res["row_max"][[3, 5]]).all() and (res["row_arg"][[3, 5]] == -1).all()
    assert np.isnan(res["col_max"][0]) and res["col_arg"][0] == -1
    assert res["row_arg"].dtype == np.int32 and res["row_max"].dtype == np.float32


def test_sparse_chunking_is_bitwise_stable_for_sxy(sparse_pair):
    """Each sxy cell is summed in token order whatever the chunking or thread count."""
    a, b, _ = sparse_pair
    sxy = []
    for chunk, buf, threads in ((1, 1, 1), (100, 256, 2), (3000, 10**6, 2)):
        acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", buffer_tokens=buf,
                                 n_threads=threads)
        for ca, cb in zip(chunks(a, chunk), chunks(b, chunk)):
            acc.update(ca, cb)
        sxy.append(acc.sxy.copy())
    assert np.array_equal(sxy[0], sxy[1]) and np.array_equal(sxy[0], sxy[2])


def test_reset_forgets_everything(sparse_pair):
    """A reused accumulator (reset: parallel zero fill of sxy) gives bitwise what a fresh one gives."""
    a, b, _ = sparse_pair
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", n_threads=2)
    acc.update(a * 3.0, b[::-1])  # other tokens first
    acc.sxy
    acc.reset()
    assert acc.n_tokens == 0 and not acc.sxy.any()
    acc.update(a, b)
    fresh = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", n_threads=2)
    fresh.update(a, b)
    assert np.array_equal(acc.sxy, fresh.sxy)
    r1, r2 = acc.result(), fresh.result()
    for k in ("row_max", "row_arg", "col_max", "col_arg", "sum_a", "min_b", "nnz_b"):
        assert np.array_equal(r1[k], r2[k], equal_nan=r1[k].dtype.kind == "f"), k


def test_wide_rows_take_the_sxy_prefetch_path_and_agree():
    """B wide enough (8192 features: 64 KiB rows) for the kernel to prefetch sxy cells; the
    sums are unchanged (prefetches are hints) and bitwise equal to the unprefetched kernel's."""
    rng = np.random.default_rng(3)
    a = sae_like(400, 24, 5, rng)
    b = sae_like(400, 8192, 40, rng)
    assert b.shape[1] * 8 >= P_numba.SXY_PREFETCH_ROW_BYTES
    acc = PearsonAccumulator(24, 8192, backend="cpu", n_threads=2)
    acc.update(a, b)
    np.testing.assert_allclose(acc.sxy, a.toarray().astype(np.float64).T @ b.toarray(), rtol=1e-12, atol=1e-12)
    old = P_numba.SXY_PREFETCH_ROW_BYTES
    try:
        P_numba.SXY_PREFETCH_ROW_BYTES = 1 << 60  # off
        off = PearsonAccumulator(24, 8192, backend="cpu", n_threads=2)
        off.update(a, b)
        assert np.array_equal(off.sxy, acc.sxy)
    finally:
        P_numba.SXY_PREFETCH_ROW_BYTES = old


def test_float64_sparse_values_keep_their_precision(sparse_pair):
    """float64 features (values float32 cannot hold) go through the 64-bit packed stream of
    the scatter: sxy equals the float64 reference sum, and the moments and maxima the
    reference, whatever the chunking."""
    a, b, _ = sparse_pair
    rng = np.random.default_rng(5)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    a.data += np.where(a.indices == 5, 0.0, rng.normal(0, 1e-9, a.nnz))  # below float32
    # resolution at these magnitudes; column 5 stays constant (excluded)
    b.data += rng.normal(0, 1e-9, b.nnz)
    x, y = a.toarray(), b.toarray()
    got = []
    for chunk, buf in ((500, 700), (3000, 10**6)):
        acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", buffer_tokens=buf, n_threads=2)
        for ca, cb in zip(chunks(a, chunk), chunks(b, chunk)):
            acc.update(ca, cb)
        got.append((acc.sxy.copy(), acc.result()))
    np.testing.assert_allclose(got[0][0], x.T @ y, rtol=1e-13, atol=1e-12)
    assert np.array_equal(got[0][0], got[1][0])
    for k in ("sum_a", "sumsq_a", "nnz_a", "min_a", "max_a", "sum_b", "nnz_b", "max_b"):
        assert np.array_equal(got[0][1][k], got[1][1][k]), k
    np.testing.assert_allclose(got[0][1]["sum_a"], x.sum(0), rtol=1e-13)
    np.testing.assert_array_equal(got[0][1]["max_b"], y.max(0))
    check_against_ref(got[0][1], ref_pearson(x, y))


def test_input_formats_agree(sparse_pair):
    a, b, r = sparse_pair
    # CSR triples (n_a/n_b required), and a dense B chunk fed to a sparse accumulator
    trip = lambda m: (m.indptr, m.indices, m.data)  # noqa: E731
    res = pearson_pair((trip(c) for c in chunks(a, 400)), (trip(c) for c in chunks(b, 400)),
                       n_a=a.shape[1], n_b=b.shape[1], backend="cpu")
    check_against_ref(res, r)
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", mode="sparse")
    for ca, cb in zip(chunks(a, 1000), chunks(b, 1000)):
        acc.update(ca, cb.toarray())
    check_against_ref(acc.result(), r)
    with pytest.raises(ValueError, match="n_a"):
        pearson_pair([trip(a)], [trip(b)])


def test_scipy_fallback_kernel_matches_numba(sparse_pair):
    a, b, r = sparse_pair
    res = pearson_pair(chunks(a, 700), chunks(b, 700), backend="cpu", cpu_kernel="scipy")
    check_against_ref(res, r)
    if P.HAVE_NUMBA:
        res2 = pearson_pair(chunks(a, 700), chunks(b, 700), backend="cpu", cpu_kernel="numba")
        np.testing.assert_allclose(res["row_max"], res2["row_max"], atol=1e-6)
        assert np.array_equal(res["row_arg"], res2["row_arg"])


def test_without_numba(sparse_pair, offset_pair, monkeypatch):
    """The dependency-free path (array-module moments and finaliser, scipy SpGEMM kernel):
    what runs where numba is not installed, and the code the CUDA backend shares."""
    monkeypatch.setattr(P_numba, "HAVE_NUMBA", False)
    a, b, r = sparse_pair
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", buffer_tokens=1000)
    assert acc.cpu_kernel == "scipy"
    for ca, cb in zip(chunks(a, 300), chunks(b, 300)):
        acc.update(ca, cb)
    res = acc.result()
    check_against_ref(res, r)
    assert res["excluded_a"] == 2 and res["never_fired_a"] == 1 and res["valid_b"][7]
    x, y, r2 = offset_pair
    check_against_ref(pearson_pair(chunks(x, 700), chunks(y, 700), backend="cpu"), r2)


def _run(a, b, chunk, **kw):
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", **kw)
    for ca, cb in zip(chunks(a, chunk), chunks(b, chunk)):
        acc.update(ca, cb)
    sxy = acc.sxy.copy()
    return sxy, acc.result()


MOMENT_KEYS = ("sum_a", "sumsq_a", "nnz_a", "min_a", "max_a", "sum_b", "sumsq_b", "nnz_b",
               "min_b", "max_b", "row_max", "row_arg", "col_max", "col_arg")


def test_native_kernel_is_bitwise_the_numba_kernel(sparse_pair, monkeypatch):
    """The C kernel (csrc/pearson.c: transpose, moments, AVX-512 and scalar scatter, row
    prefetch) gives bitwise the numba kernel's sums, moments and maxima, for any chunking,
    buffer and thread count; the prefetches are hints and change nothing."""
    assert P.native_kernels() is not None, "csrc/pearson.c did not build (is a C compiler installed?)"
    assert PearsonAccumulator(3, 3, backend="cpu").cpu_kernel == "native"  # the default here
    rng = np.random.default_rng(11)
    a2 = sae_like(6000, 300, 20, rng)
    b2 = correlated(a2, 260, rng)
    for a, b in (sparse_pair[:2], (a2, b2)):
        ref_sxy, ref = _run(a, b, 512, cpu_kernel="numba", buffer_tokens=1500, n_threads=2)
        cases = [(1, 256, 1, 1, 1), (512, 1500, 2, 1, 1), (4096, 10**6, 2, 0, 1),
                 (700, 2000, 3, 1, 0), (333, 900, 2, 0, 0)]
        for chunk, buf, threads, variant, row_min in cases:
            monkeypatch.setattr(P_native, "NATIVE_VARIANT", variant)
            monkeypatch.setattr(P_native, "ROW_PREFETCH_MIN_ENTRIES", row_min)
            sxy, res = _run(a, b, chunk, cpu_kernel="native", buffer_tokens=buf, n_threads=threads)
            assert np.array_equal(sxy, ref_sxy), (chunk, buf, threads, variant, row_min)
            for k in MOMENT_KEYS:
                assert np.array_equal(res[k], ref[k], equal_nan=res[k].dtype.kind == "f"), k
    np.testing.assert_allclose(ref_sxy, a2.toarray().astype(np.float64).T @ b2.toarray(),
                               rtol=1e-12, atol=1e-12)


def test_native_kernel_wide_b_uses_int32_indices():
    """More than 65,536 B features: B's indices no longer fit the uint16 stream; the int32
    path gives the same sums as numba and the float64 reference."""
    rng = np.random.default_rng(12)
    n_b = 65536 + 700
    a = sae_like(300, 3, 2, rng)
    b = sae_like(300, n_b, 30, rng)
    b = sp.hstack([b, sp.csr_matrix(a.toarray()[:, [0]] * 2.0)]).tocsr()  # a partner at the far end
    sxy_c, res_c = _run(a, b, 128, cpu_kernel="native", n_threads=2)
    sxy_n, res_n = _run(a, b, 128, cpu_kernel="numba", n_threads=2)
    assert np.array_equal(sxy_c, sxy_n)
    np.testing.assert_allclose(sxy_c, a.toarray().astype(np.float64).T @ b.toarray(), rtol=1e-12)
    assert res_c["row_arg"][0] == n_b and res_c["row_max"][0] == pytest.approx(1.0)
    assert np.array_equal(res_c["col_arg"], res_n["col_arg"])


def test_native_kernel_checks_its_buffers(sparse_pair):
    """The C path skips scipy's canonical-format and NumPy's finiteness checks and runs its
    own: unsorted rows and duplicate entries are summed like the canonical matrix, an index out
    of range or a NaN is an error naming the side that drops its buffer and changes no sum,
    and a float64 side falls back to numba after the same check."""
    a, b, r = sparse_pair
    rng = np.random.default_rng(13)
    coo = a.tocoo()
    half = coo.data / 2  # exact halves: the duplicates sum back to the same float32 values
    rows, cols = np.r_[coo.row, coo.row], np.r_[coo.col, coo.col]
    vals = np.r_[half, coo.data - half].astype(np.float32)
    order = np.argsort(rows * 1.0 + rng.random(rows.size) * 0.5, kind="stable")  # rows shuffled inside
    indptr = np.searchsorted(rows[order], np.arange(a.shape[0] + 1)).astype(np.int64)
    messy = (indptr, cols[order].astype(np.int32), vals[order])
    assert not sp.csr_matrix((messy[2], messy[1], messy[0]), shape=a.shape).has_canonical_format
    kept = [x.copy() for x in messy]
    sxy_ref, ref = _run(a, b, 3000, cpu_kernel="numba")
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", cpu_kernel="native")
    acc.update(messy, b)
    assert np.array_equal(acc.sxy, sxy_ref)
    res = acc.result()
    for k in MOMENT_KEYS:
        assert np.array_equal(res[k], ref[k], equal_nan=res[k].dtype.kind == "f"), k
    assert all(np.array_equal(x, y) for x, y in zip(messy, kept))  # the caller's arrays untouched
    bad_idx = messy[1].copy()
    bad_idx[len(bad_idx) // 2] = a.shape[1] + 2
    bad = (messy[0], bad_idx, messy[2])
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", cpu_kernel="native")
    with pytest.raises(ValueError, match="A chunk has a feature index outside"):
        acc.update(bad, b)
        acc.result()
    for side in (0, 1):  # NaN in a float32 buffer: an error naming the side; the buffer is
        acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", cpu_kernel="native",
                                 buffer_tokens=1000)  # dropped, earlier buffers stay
        acc.update(a[:1000], b[:1000])
        x, y = a[1000:].copy(), b[1000:].copy()
        (x, y)[side].data[7] = np.nan
        with pytest.raises(ValueError, match=f"{'AB'[side]} chunk contains NaN"):
            acc.update(x, y)
        assert acc.n_tokens == 1000
        ok = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", cpu_kernel="numba")
        ok.update(a[:1000], b[:1000])
        assert np.array_equal(acc.sxy, ok.sxy) and np.array_equal(acc.result()["sum_b"], ok.result()["sum_b"])
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu", cpu_kernel="native")
    acc.update(messy, b.astype(np.float64))  # mixed widths: the numba scatter
    res = acc.result()
    check_against_ref(res, r)
    np.testing.assert_allclose(acc.sxy, sxy_ref, rtol=1e-15)


def test_native_kernel_recovers_after_a_rejected_buffer():
    """A buffer that B's check rejects while the previous buffer's scatter still runs leaves
    that scatter its half of the double-buffered work arrays (B's uint16 indices, A's
    records): the next buffer sums as if the rejected one had never come.  (Before the
    strategy split a rejected buffer took the other half anyway, and the next one overwrote
    the running scatter's: wrong sums in some of these trials, a parity that always moved.)"""
    for trial in range(2):
        rng = np.random.default_rng(20 + trial)
        a = sae_like(24000, 400, 80, rng)
        b = correlated(a, 400, rng)
        a1, b1, a2, a3, b3 = a[:20000], b[:20000], a[20000:20010], a[20010:], b[20010:]
        bad = b[20000:20010].copy()
        bad.data[5] = np.nan
        kw = dict(backend="cpu", n_threads=2, buffer_tokens=10)
        acc = PearsonAccumulator(400, 400, cpu_kernel="native", **kw)
        acc.update(a1, b1)  # its scatter runs on ...
        running = acc._scatter._parity  # ... on this half
        with pytest.raises(ValueError, match="B chunk contains NaN"):
            acc.update(a2, bad)  # ... while this buffer is checked and dropped
        assert acc._scatter._parity == running
        acc.update(a3, b3)
        ok = PearsonAccumulator(400, 400, cpu_kernel="numba", **kw)
        ok.update(a1, b1)
        ok.update(a3, b3)
        assert acc.n_tokens == ok.n_tokens == 23990
        assert np.array_equal(acc.sxy, ok.sxy), trial
        res, ref = acc.result(), ok.result()
        for k in MOMENT_KEYS:
            assert np.array_equal(res[k], ref[k], equal_nan=res[k].dtype.kind == "f"), k


def test_xp_finaliser_matches_numba_finaliser(sparse_pair, monkeypatch):
    """The array-module finaliser (GPU / no-numba path, and on the CPU every matrix up to
    numba_kernels.NUMPY_MAX_CELLS) gives bitwise the numba finaliser's maxima, excluded features and
    ties included."""
    a, b, _ = sparse_pair
    b = b.tolil()
    b[:, 3] = 0  # an excluded B feature (never fires)
    b[:, 7] = b[:, 5]  # exact ties: the lower index wins on both paths
    b = b.tocsr()
    acc = PearsonAccumulator(a.shape[1], b.shape[1], backend="cpu")
    acc.update(a, b)
    default = P_numba.NUMPY_MAX_CELLS
    monkeypatch.setattr(P_numba, "NUMPY_MAX_CELLS", 0)  # the numba kernel
    res = acc.result()
    assert res["excluded_b"] >= 1 and not res["valid_b"][3]
    fa, fb = acc._finish_side(acc._side["a"]), acc._finish_side(acc._side["b"])
    rm, ra, cm, ca = P._maxima_xp(np, acc.sxy, float(acc.n_tokens), fa, fb, block_rows=7)
    ok = np.isfinite(rm)
    assert np.array_equal(rm[ok].astype(np.float32), res["row_max"][ok])
    assert np.array_equal(np.where(ok, ra, -1), res["row_arg"])
    okc = np.isfinite(cm)
    assert np.array_equal(cm[okc].astype(np.float32), res["col_max"][okc])
    assert np.array_equal(np.where(okc, ca, -1), res["col_arg"])
    monkeypatch.setattr(P_numba, "NUMPY_MAX_CELLS", default)  # NumPy, the default here
    small = acc.result()
    for k in ("row_max", "row_arg", "col_max", "col_arg"):
        assert np.array_equal(small[k], res[k], equal_nan=True), k


def test_a_float32_pair_job_runs_without_importing_numba(tmp_path):
    """A default-sized float32 pair (C scatter, NumPy maxima) never imports numba: its import
    and first kernel call cost ~1.6 CPU s, more than such a pair's whole pass."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, scipy.sparse as sp\n"
        "from universality.compare.pearson import PearsonAccumulator\n"
        "rng = np.random.default_rng(0)\n"
        "a = sp.random(2000, 64, density=0.05, format='csr', dtype=np.float32, random_state=1)\n"
        "b = sp.random(2000, 48, density=0.05, format='csr', dtype=np.float32, random_state=2)\n"
        "acc = PearsonAccumulator(64, 48, backend='cpu')\n"
        "assert acc.cpu_kernel == 'native', acc.cpu_kernel\n"
        "acc.update(a, b); acc.result(top_k=3); acc.reset()\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_sparse_heavy_tailed_larger_scale_multithreaded():
    """Bigger run (skewed feature frequencies -> load balancing) vs a vectorised float64
    centred two-pass reference."""
    rng = np.random.default_rng(1)
    n, fa, fb = 20000, 300, 260
    a = sae_like(n, fa, 20, rng)
    b = correlated(a, fb, rng)
    res = pearson_pair(chunks(a, 4096), chunks(b, 3000), backend="cpu", n_threads=2,
                       buffer_tokens=5000)
    x, y = a.toarray().astype(np.float64), b.toarray().astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc.T @ yc) / np.sqrt(np.outer((xc * xc).sum(0), (yc * yc).sum(0)))
    r[(x.min(0) == x.max(0))] = np.nan
    r[:, (y.min(0) == y.max(0))] = np.nan
    check_against_ref(res, r)
    assert np.nanmax(res["row_max"]) > 0.5  # the correlated construction is visible


def test_float64_accumulator_is_needed():
    """Frequent features, 2e5 tokens: a float32 streaming accumulator misses the 1e-5 target
    by more than 10x; this kernel (float64 sxy) meets it."""
    rng = np.random.default_rng(2)
    n = 200_000
    z = rng.normal(size=n)
    fire = rng.random((n, 2)) < 0.99
    x = np.where(fire[:, :1], 3.0 + 0.1 * (z[:, None] + rng.normal(size=(n, 1))), 0.0)
    y = np.where(fire[:, 1:], 3.0 + 0.1 * (z[:, None] + rng.normal(size=(n, 1))), 0.0)
    x, y = x.astype(np.float32), y.astype(np.float32)
    r = ref_pearson(x, y)[0, 0]
    res = pearson_pair(chunks(sp.csr_matrix(x), 8192), chunks(sp.csr_matrix(y), 8192),
                       backend="cpu")
    assert abs(res["row_max"][0] - r) < TOL

    def f32_running_sum(v):  # one float32 accumulator updated token by token
        return np.cumsum(v.astype(np.float32), dtype=np.float32)[-1].astype(np.float64)

    x64, y64 = x[:, 0].astype(np.float64), y[:, 0].astype(np.float64)
    sx, sy = f32_running_sum(x64), f32_running_sum(y64)
    sxx, syy, sxy = f32_running_sum(x64 * x64), f32_running_sum(y64 * y64), f32_running_sum(x64 * y64)
    r32 = (n * sxy - sx * sy) / np.sqrt((n * sxx - sx * sx) * (n * syy - sy * sy))
    assert abs(r32 - r) > 10 * TOL


# --------------------------------------------------------------------------------------
# dense path
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offset_pair():
    """Neuron-like dense activations around 1e3 with small variance, shared latent signal."""
    rng = np.random.default_rng(3)
    n, fa, fb, k = 4000, 24, 20, 5
    z = rng.normal(size=(n, k))
    x = 1e3 + 0.05 * (z @ rng.normal(size=(k, fa)) + rng.normal(size=(n, fa)))
    y = -2e3 + 0.05 * (z @ rng.normal(size=(k, fb)) + rng.normal(size=(n, fb)))
    x[:, 2] = 1e3  # constant
    y[:, 4] = 7.0
    x, y = x.astype(np.float32), y.astype(np.float32)
    return x, y, ref_pearson(x, y)


@pytest.mark.parametrize("chunk", [1, 33, 1000, 4000])
def test_dense_large_offsets_any_chunking(offset_pair, chunk):
    x, y, r = offset_pair
    res = pearson_pair(chunks(x, chunk), chunks(y, chunk), backend="cpu")
    assert res["mode"] == "dense"
    check_against_ref(res, r)
    assert res["excluded_a"] == 1 and res["constant_a"] == 1 and res["excluded_b"] == 1
    np.testing.assert_allclose(res["mean_a"], x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(res["std_b"], y.astype(np.float64).std(0), rtol=1e-9, atol=1e-12)


def test_dense_float32_matmul_option(offset_pair):
    x, y, r = offset_pair
    res = pearson_pair(chunks(x, 1000), chunks(y, 1000), backend="cpu", dense_dtype="float32")
    check_against_ref(res, r)


def test_offset_case_defeats_naive_float32(offset_pair):
    """Sanity check that the offset case is hard: the single-pass formula on float32 sums
    (no shift) is far off, so passing it means the shift works."""
    x, y, r = offset_pair
    n = np.float32(x.shape[0])
    sx, sy, sxy = x.sum(0), y.sum(0), x.T @ y
    sxx, syy = (x * x).sum(0), (y * y).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        naive = (n * sxy - np.outer(sx, sy)) / np.sqrt(np.outer(n * sxx - sx * sx, n * syy - sy * sy))
    assert np.nanmax(np.abs(naive - r)) > 1e-2


def test_dense_torch_and_mixed_inputs(offset_pair):
    torch = pytest.importorskip("torch")
    x, y, r = offset_pair
    acc = PearsonAccumulator(x.shape[1], y.shape[1], backend="cpu")
    acc.update(torch.from_numpy(x[:1500]), y[:1500])
    acc.update(x[1500:], sp.csr_matrix(y[1500:]))  # sparse chunk into a dense accumulator
    check_against_ref(acc.result(), r)


# --------------------------------------------------------------------------------------
# exclusion and ties
# --------------------------------------------------------------------------------------
def tie_case(dense: bool):
    rng = np.random.default_rng(4)
    n = 500
    z = np.where(rng.random(n) < 0.3, rng.lognormal(size=n), 0.0)
    w = np.where(rng.random(n) < 0.2, rng.lognormal(size=n), 0.0)
    zeros, const_a, const_b = np.zeros(n), np.full(n, 2.0), np.full(n, 5.0)
    a = np.stack([z, w, w, zeros, const_a], 1).astype(np.float32)  # A2 duplicates A1
    b = np.stack([zeros, z, z, 3 * w, const_b], 1).astype(np.float32)  # B2 duplicates B1
    if dense:
        a, b = a + 100.0, b - 50.0  # offsets: constant columns stay constant
        return a, b
    return sp.csr_matrix(a), sp.csr_matrix(b)


@pytest.mark.parametrize("dense", [False, True])
def test_exclusion_and_deterministic_ties(dense):
    a, b = tie_case(dense)
    for chunk in (64, 500):
        res = pearson_pair(chunks(a, chunk), chunks(b, chunk), backend="cpu")
        assert res["excluded_a"] == 2 and res["excluded_b"] == 2
        if not dense:
            assert res["never_fired_a"] == 1 and res["constant_a"] == 1
        assert list(res["row_arg"]) == [1, 3, 3, -1, -1]  # B1 == B2: lowest index wins
        assert list(res["col_arg"]) == [-1, 0, 0, 1, -1]  # A1 == A2: lowest index wins
        np.testing.assert_allclose(res["row_max"][:3], 1.0, atol=1e-6)
        assert np.isnan(res["row_max"][3:]).all() and np.isnan(res["col_max"][[0, 4]]).all()
        # excluded features are never reported as a match, and never as 0 or +-1
        assert not np.isin(res["row_arg"], [0, 4]).any() and not np.isin(res["col_arg"], [3, 4]).any()


def test_all_partners_excluded_and_empty():
    a = sp.csr_matrix(np.array([[1.0], [0.0], [2.0]], np.float32))
    # explicitly stored zeros only: these features never fire
    b = sp.csr_matrix((np.zeros(2, np.float32), np.array([0, 1]), np.array([0, 1, 2, 2])), shape=(3, 2))
    res = pearson_pair([a], [b], backend="cpu")
    assert np.isnan(res["row_max"][0]) and res["row_arg"][0] == -1
    assert res["excluded_b"] == 2 and res["never_fired_b"] == 2
    empty = PearsonAccumulator(3, 2, backend="cpu").result()
    assert empty["n_tokens"] == 0 and empty["excluded_a"] == 3 and np.isnan(empty["row_max"]).all()


def test_bad_inputs_are_rejected():
    acc = PearsonAccumulator(2, 2, backend="cpu")
    with pytest.raises(ValueError, match="same tokens"):
        acc.update(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.array([[np.nan, 1.0]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="expected"):
        acc.update(np.ones((3, 5)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="differ in length"):
        pearson_pair([np.ones((3, 2))], [np.ones((4, 2))], backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        get_xp("tpu")


def test_duplicate_csr_entries_are_summed():
    """Non-canonical CSR (duplicate (t, i)) must act like the summed matrix."""
    indptr = np.array([0, 2, 3, 4])
    a_dup = (indptr, np.array([0, 0, 1, 0]), np.array([1.0, 2.0, 1.0, 1.0], np.float32))
    a_sum = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    b = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 1.0]], np.float32)
    r1 = pearson_pair([a_dup], [sp.csr_matrix(b)], n_a=2, backend="cpu")
    r2 = pearson_pair([sp.csr_matrix(a_sum)], [sp.csr_matrix(b)], backend="cpu")
    np.testing.assert_allclose(r1["row_max"], r2["row_max"], atol=1e-7)
    np.testing.assert_allclose(r1["sumsq_a"], r2["sumsq_a"])


# --------------------------------------------------------------------------------------
# streaming helpers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dense", "csr", "callable"])
@pytest.mark.parametrize("offset", [0, 1, 777, 2999, 3000 + 5])
def test_rolled_chunks(kind, offset):
    rng = np.random.default_rng(5)
    x = (rng.random((3000, 6)) * (rng.random((3000, 6)) < 0.3)).astype(np.float32)
    src = {"dense": x, "csr": sp.csr_matrix(x), "callable": (lambda s, e: x[s:e])}[kind]
    parts = list(rolled_chunks(src, offset, 256, n_rows=3000 if kind == "callable" else None))
    def to_dense(p):  # wrapped chunks of sparse sources come back as CSR triples
        if isinstance(p, tuple):
            return sp.csr_matrix((p[2], p[1], p[0]), shape=(len(p[0]) - 1, 6)).toarray()
        return p.toarray() if sp.issparse(p) else p

    dense = [to_dense(p) for p in parts]
    assert [len(d) for d in dense] == [256] * 11 + [3000 - 11 * 256]
    np.testing.assert_array_equal(np.concatenate(dense), np.roll(x, -offset, axis=0))


def test_circular_shift_null_pairs_t_with_t_plus_offset(sparse_pair):
    a, b, _ = sparse_pair
    n, off = a.shape[0], 1234
    want = ref_pearson(a.toarray(), np.roll(b.toarray(), -off, axis=0))
    res = pearson_pair(chunks(a, 500), rolled_chunks(b, off, 700), backend="cpu")
    check_against_ref(res, want)
    res2 = pearson_pair(chunks(a, 500), roll_stream(chunks(b, 300), off, n), backend="cpu")
    check_against_ref(res2, want)
    with pytest.raises(ValueError, match="n_rows"):
        list(roll_stream(chunks(b, 300), off, n + 1))


def test_aligned_chunks_and_iter_rows_items():
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = sp.csr_matrix(x[:, :1])
    pairs = list(aligned_chunks([(0, x[:3]), (3, x[3:])], [y[:4], y[4:9], y[9:]]))
    assert [p[0].shape[0] for p in pairs] == [3, 1, 5, 1]
    assert all(p[0].shape[0] == p[1].shape[0] for p in pairs)


def test_save_and_load_result(tmp_path, sparse_pair):
    a, b, _ = sparse_pair
    res = pearson_pair([a], [b], backend="cpu")
    path = tmp_path / "pearson" / "cmp" / "A0_B1.npz"
    save_result(path, res, layer_a=0, layer_b=1)
    back = load_result(path)
    assert back["layer_b"] == 1 and back["excluded_a"] == res["excluded_a"]
    np.testing.assert_array_equal(back["row_arg"], res["row_arg"])
    np.testing.assert_array_equal(back["col_max"], res["col_max"])


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------
def test_cpu_backend_selection():
    assert get_xp("cpu") is np
    assert P.resolve_backend("auto") == ("cuda" if HAS_GPU else "cpu")


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised where CUDA is unavailable")
def test_cuda_request_without_gpu_fails_clearly():
    with pytest.raises(RuntimeError, match="cuda"):
        get_xp("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        PearsonAccumulator(3, 3, backend="cuda")


@pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA device")
def test_cuda_sparse_and_dense_match_reference(sparse_pair, offset_pair):  # pragma: no cover
    import cupy
    import cupyx.scipy.sparse as csp

    a, b, r = sparse_pair
    assert get_xp("cuda") is cupy
    res = pearson_pair(chunks(a, 512), chunks(b, 512), backend="cuda")
    assert res["backend"] == "cuda" and res["mode"] == "sparse"
    check_against_ref(res, r)
    res_dev = pearson_pair(chunks(csp.csr_matrix(a), 1000), chunks(csp.csr_matrix(b), 1000),
                           backend="cuda")
    check_against_ref(res_dev, r)
    x, y, r2 = offset_pair
    res2 = pearson_pair(chunks(cupy.asarray(x), 333), chunks(cupy.asarray(y), 333), backend="cuda")
    check_against_ref(res2, r2)
    a_t, b_t = tie_case(False)
    res3 = pearson_pair([a_t], [b_t], backend="cuda")
    assert list(res3["row_arg"][3:]) == [-1, -1] and res3["excluded_b"] == 2
