"""Per-feature moments, and the finaliser: from the running sums to Pearson's ``r`` and its maxima.

Each side keeps, per feature, ``sx = sum x`` and ``sxx = sum x^2`` (float64; in dense mode of
``x - shift``, the shift being the feature's first-chunk mean, Pearson being shift invariant),
the non-zero and stored-entry counts, and the running min and max.  With ``sxy`` at the end

    r_ij = (N sxy_ij - sx_i sy_j) / sqrt((N sxx_i - sx_i^2) (N syy_j - sy_j^2))

and one pass over ``r`` gives the row maxima (A -> B: best B feature for every A feature) and
the column maxima (B -> A) with their argmax.  ``r`` is never materialised whole (except by
:meth:`PearsonAccumulator.pearson_matrix`, for tests).

Excluded features.  A feature that never fires, or is constant, on the evaluation tokens has
no Pearson correlation.  Constancy is decided exactly from the running per-feature min and
max (including the implicit zeros of sparse inputs), not from a variance that rounding may
leave at 1e-17.  Excluded features get ``NaN`` / argmax ``-1`` in the results, are ignored as
match candidates, and are counted (``excluded_a``, ``excluded_b``).

Ties.  ``row_arg`` is the smallest ``j`` reaching the row maximum, ``col_arg`` the smallest
``i`` (exact float64 ties, e.g. duplicated features, resolve to the lower index).
"""
from __future__ import annotations

import numpy as np

from universality.compare.pearson import numba_kernels as nk


def new_side(xp, n: int) -> dict:
    """Zeroed moments of ``n`` features on ``xp``'s device (all arrays [n])."""
    return {
        "shift": None,  # dense mode: per-feature shift (first-chunk mean), float64
        "sx": xp.zeros(n, xp.float64),  # sum of (x - shift)
        "sxx": xp.zeros(n, xp.float64),  # sum of (x - shift)^2
        "nnz": xp.zeros(n, xp.int64),  # tokens with x != 0
        "stored": xp.zeros(n, xp.int64),  # entries seen explicitly (dense: all tokens)
        "vmin": xp.full(n, xp.inf),  # min / max over explicit entries
        "vmax": xp.full(n, -xp.inf),
    }


def add_sparse(xp, side: dict, trip, n: int) -> None:
    """Add one CSR chunk's entries (``trip``: indptr, indices [nnz], values [nnz]) of ``n``
    features to ``side``: the per-chunk path of the strategies that do not fold moments in."""
    _, idx, val = trip
    if xp is np and nk.HAVE_NUMBA:
        nk.sparse_moments(idx, val, side["sx"], side["sxx"], side["nnz"], side["stored"],
                          side["vmin"], side["vmax"])
        return
    v64 = val.astype(xp.float64)
    side["sx"] += xp.bincount(idx, weights=v64, minlength=n)
    side["sxx"] += xp.bincount(idx, weights=v64 * v64, minlength=n)
    side["nnz"] += xp.bincount(idx[val != 0], minlength=n)
    side["stored"] += xp.bincount(idx, minlength=n)
    _scatter_minmax(xp, side["vmin"], side["vmax"], idx, v64)


def add_dense(xp, side: dict, x):
    """Add a dense chunk ``x`` [T, F] to ``side``; returns the shifted chunk [T, F] float64
    (the first chunk fixes the shift)."""
    x64 = x.astype(xp.float64)
    if side["shift"] is None:
        side["shift"] = x64.mean(axis=0)
    xc = x64 - side["shift"]
    side["sx"] += xc.sum(axis=0)
    side["sxx"] += (xc * xc).sum(axis=0)
    side["nnz"] += xp.count_nonzero(x, axis=0).astype(xp.int64)
    side["stored"] += x.shape[0]
    xp.minimum(side["vmin"], x64.min(axis=0), out=side["vmin"])
    xp.maximum(side["vmax"], x64.max(axis=0), out=side["vmax"])
    return xc


def _scatter_minmax(xp, vmin, vmax, idx, val) -> None:
    """``vmin[idx] = min(vmin[idx], val)`` (and max) with repeated indices, NumPy or CuPy."""
    try:
        xp.minimum.at(vmin, idx, val)
        xp.maximum.at(vmax, idx, val)
    except (AttributeError, NotImplementedError):  # pragma: no cover - older CuPy
        import cupyx

        cupyx.scatter_min(vmin, idx, val)
        cupyx.scatter_max(vmax, idx, val)


def finish_side(xp, side: dict, n: int) -> dict:
    """Exact exclusion masks and ``1/sqrt(N^2 var)`` from one side's running sums over ``n``
    tokens: ``valid``, ``inv``, ``sx`` [F], the ``never``/``const`` counts, and the
    ``moments`` of the result (unshifted: mean, std, sum, sumsq, nnz, min, max)."""
    has_implicit_zero = side["stored"] < n
    vmin = xp.where(has_implicit_zero, xp.minimum(side["vmin"], 0.0), side["vmin"])
    vmax = xp.where(has_implicit_zero, xp.maximum(side["vmax"], 0.0), side["vmax"])
    if n == 0:
        vmin = vmax = xp.zeros_like(side["sx"])
    nvar = n * side["sxx"] - side["sx"] * side["sx"]  # N^2 * variance (shifted sums)
    never = (vmin == 0) & (vmax == 0)
    const = (vmax == vmin) & ~never
    degenerate = (vmax > vmin) & ~(nvar > 0)  # rounding ate the variance: cannot correlate
    valid = ~(never | const | degenerate)
    inv = xp.where(valid, 1.0 / xp.sqrt(xp.where(valid, nvar, 1.0)), 0.0)
    shift = side["shift"] if side["shift"] is not None else xp.zeros_like(side["sx"])
    mean = shift + side["sx"] / max(n, 1)
    var = xp.maximum(nvar, 0.0) / max(n, 1) ** 2
    return {
        "valid": valid,
        "inv": inv,
        "sx": side["sx"],
        "never": int(never.sum()),
        "const": int((const | degenerate).sum()),
        "moments": {
            "mean": mean,
            "std": xp.sqrt(var),
            "sum": shift * n + side["sx"],
            "sumsq": side["sxx"] + 2 * shift * side["sx"] + n * shift * shift,
            "nnz": side["nnz"],
            "min": vmin,
            "max": vmax,
        },
    }


def maxima(xp, sxy, n: float, fa: dict, fb: dict, n_threads: int):
    """Row and column max/argmax of ``r`` from ``sxy`` [n_a, n_b] and the finished sides:
    (row_max [n_a] f64 (-inf where none), row_arg [n_a] i64 (-1), col_max [n_b], col_arg
    [n_b]).  The numba kernel on CPU where numba is installed and ``sxy`` has more than
    ``numba_kernels.NUMPY_MAX_CELLS`` cells, else :func:`maxima_xp` (bitwise the same maxima: tested).
    Why not numba always: its first call costs ~1.6 CPU s per process (numba_kernels), NumPy
    takes ~30 ms on a default-sized 1024 x 1024 pair."""
    if xp is not np or not nk.HAVE_NUMBA or sxy.size <= nk.NUMPY_MAX_CELLS:
        return maxima_xp(xp, sxy, n, fa, fb)
    groups = max(1, 4 * n_threads)
    bounds = np.linspace(0, sxy.shape[0], groups + 1).astype(np.int64)
    with nk.numba_threads(n_threads):
        neg_b = np.where(fb["valid"], 0.0, -np.inf)
        sx_b = np.where(fb["valid"], fb["sx"], 0.0)
        return nk.maxima(sxy, n, fa["sx"], fa["inv"], fa["valid"], sx_b, fb["inv"], neg_b, bounds)


def maxima_xp(xp, sxy, n: float, fa: dict, fb: dict, block_rows: int = 1024):
    """Array-module version of the numba ``maxima`` (GPU, and CPU without numba).

    Processes ``block_rows`` rows of ``sxy`` at a time: peak extra memory
    ``block_rows * n_b * 8`` bytes.  Same tie rule: lowest index wins.
    """
    n_a, n_b = sxy.shape
    row_max = xp.full(n_a, -xp.inf)
    row_arg = xp.full(n_a, -1, xp.int64)
    col_max = xp.full(n_b, -xp.inf)
    col_arg = xp.full(n_b, -1, xp.int64)
    colmask = fb["valid"][None, :]
    for i0 in range(0, n_a, block_rows):
        i1 = min(n_a, i0 + block_rows)
        r = (n * sxy[i0:i1] - fa["sx"][i0:i1, None] * fb["sx"][None, :]) * fa["inv"][i0:i1, None]
        r *= fb["inv"][None, :]
        xp.clip(r, -1.0, 1.0, out=r)
        r = xp.where(fa["valid"][i0:i1, None] & colmask, r, -xp.inf)
        am = xp.argmax(r, axis=1)
        m = xp.take_along_axis(r, am[:, None], axis=1)[:, 0]
        row_max[i0:i1] = m
        row_arg[i0:i1] = xp.where(xp.isfinite(m), am, -1)
        cm_arg = xp.argmax(r, axis=0)
        cm = xp.take_along_axis(r, cm_arg[None, :], axis=0)[0]
        upd = cm > col_max
        col_max = xp.where(upd, cm, col_max)
        col_arg = xp.where(upd, cm_arg + i0, col_arg)
    return row_max, row_arg, col_max, col_arg


def pearson_matrix(xp, sxy, n: float, fa: dict, fb: dict):
    """The full ``[n_a, n_b]`` float64 ``r`` on ``xp``'s device, NaN rows/columns for excluded
    features (``n_a * n_b`` values: small problems and tests)."""
    r = (n * sxy - fa["sx"][:, None] * fb["sx"][None, :]) * fa["inv"][:, None] * fb["inv"][None, :]
    r = xp.clip(r, -1.0, 1.0)
    return xp.where(fa["valid"][:, None] & fb["valid"][None, :], r, xp.nan)


def _block_r(xp, sxy, n: float, fa: dict, fb: dict, i0: int, i1: int):
    """Rows ``i0:i1`` of ``r`` (float64, clipped to [-1, 1]) with ``-inf`` where either feature
    is excluded: the same formula and masking as :func:`maxima_xp`."""
    r = (n * sxy[i0:i1] - fa["sx"][i0:i1, None] * fb["sx"][None, :]) * fa["inv"][i0:i1, None]
    r *= fb["inv"][None, :]
    xp.clip(r, -1.0, 1.0, out=r)
    return xp.where(fa["valid"][i0:i1, None] & fb["valid"][None, :], r, -xp.inf)


def _rows_topk(xp, r, k: int):
    """Top ``k`` of every row of ``r`` [m, n] (``-inf`` = no candidate): values [m, k] in
    decreasing order, ties to the lower column index (as a stable sort of ``-r`` would give).
    A partial selection first; rows with ties across the k-th value are redone by a full sort."""
    m, n = r.shape
    if k >= n:
        idx = xp.argsort(-r, axis=1, kind="stable")
    else:
        part = xp.argpartition(-r, k - 1, axis=1)[:, :k]
        part.sort(axis=1)  # ascending column index: the stable sort below then breaks ties low
        vals = xp.take_along_axis(r, part, axis=1)
        order = xp.argsort(-vals, axis=1, kind="stable")
        idx = xp.take_along_axis(part, order, axis=1)
        kth = xp.take_along_axis(r, idx[:, -1:], axis=1)
        redo = xp.flatnonzero((r >= kth).sum(axis=1) > k)  # a tie straddles the k-th place
        if len(redo):
            idx[redo] = xp.argsort(-r[redo], axis=1, kind="stable")[:, :k]
    idx = idx[:, :k]
    return xp.take_along_axis(r, idx, axis=1), idx


def _merge_topk(xp, vals, idx, new_vals, new_idx, k: int):
    """Top ``k`` of two candidate lists per row, ``new_idx`` all above ``idx`` (later rows of
    ``sxy``): a stable sort of the concatenation keeps the lower index first on ties."""
    v = xp.concatenate([vals, new_vals], axis=1)
    i = xp.concatenate([idx, new_idx], axis=1)
    order = xp.argsort(-v, axis=1, kind="stable")[:, :k]
    return xp.take_along_axis(v, order, axis=1), xp.take_along_axis(i, order, axis=1)


def topk_xp(xp, sxy, n: float, fa: dict, fb: dict, k: int, block_rows: int = 1024):
    """The ``k`` best candidates of every feature in both directions, from the same sums as
    :func:`maxima_xp`: (row_val [n_a, k] f64, row_idx [n_a, k] i64, col_val [n_b, k],
    col_idx [n_b, k]); decreasing ``r``, ties to the lower index, ``-inf`` / ``-1`` where a
    feature has fewer than ``k`` valid candidates (excluded features: all ``-1``).  Entry 0 is
    the maximum (same value and index as :func:`maxima_xp`).  One extra pass over ``sxy``, peak
    extra memory ``block_rows * n_b * 8`` bytes; the maxima pass is untouched."""
    n_a, n_b = sxy.shape
    kr, kc = min(k, n_b), min(k, n_a)
    row_val = xp.full((n_a, k), -xp.inf)
    row_idx = xp.full((n_a, k), -1, xp.int64)
    col_val = xp.full((n_b, 0), -xp.inf)
    col_idx = xp.full((n_b, 0), -1, xp.int64)
    for i0 in range(0, n_a, block_rows):
        i1 = min(n_a, i0 + block_rows)
        r = _block_r(xp, sxy, n, fa, fb, i0, i1)
        v, i = _rows_topk(xp, r, kr)
        row_val[i0:i1, :kr], row_idx[i0:i1, :kr] = v, i
        v, i = _rows_topk(xp, xp.ascontiguousarray(r.T), min(kc, i1 - i0))
        col_val, col_idx = _merge_topk(xp, col_val, col_idx, v, i + i0, kc)
    pad = k - col_val.shape[1]
    if pad:
        col_val = xp.concatenate([col_val, xp.full((n_b, pad), -xp.inf)], axis=1)
        col_idx = xp.concatenate([col_idx, xp.full((n_b, pad), -1, xp.int64)], axis=1)
    row_idx = xp.where(xp.isfinite(row_val), row_idx, -1)
    col_idx = xp.where(xp.isfinite(col_val), col_idx, -1)
    return row_val, row_idx, col_val, col_idx
