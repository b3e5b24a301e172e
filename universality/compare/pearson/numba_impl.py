"""The compiled numba kernels of :mod:`.numba_kernels` (see its docstring) and their scatter
strategy; imported on first use through that module, never at package import."""
from __future__ import annotations

import numba as _nb
import numpy as np

from universality.compare.pearson import numba_kernels as _cfg
from universality.compare.pearson.numba_kernels import numba_threads
from universality.compare.pearson.scatter import ScatterBackend

_njit = _nb.njit(cache=True, nogil=True, boundscheck=False)
_pjit = _nb.njit(cache=True, nogil=True, boundscheck=False, parallel=True)

try:
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _prefetch(typingctx, arr, idx):
        """``llvm.prefetch`` (read, locality 2, data) of ``&arr[idx]``; a no-op semantically."""
        sig = _nb.types.void(arr, idx)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = _cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                            wraparound=False, boundscheck=False)
            i8p = _ir.IntType(8).as_pointer()
            i32 = _ir.IntType(32)
            fn = _cgutils.get_or_insert_function(
                builder.module, _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0i8")
            builder.call(fn, [builder.bitcast(ptr, i8p), _ir.Constant(i32, 0),
                              _ir.Constant(i32, 2), _ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen
except Exception:  # pragma: no cover - numba internals moved: run without prefetch
    _cfg.PREFETCH_AHEAD = _cfg.SXY_PREFETCH_AHEAD = 0

    @_njit
    def _prefetch(arr, idx):
        pass


@_pjit
def _transpose_a(indptr, indices, data, n_cols, b_indptr, n_parts):  # pragma: no cover - compiled
    """A's CSR chunk [T, F_A] -> feature-major (CSC) entries, each tagged with its token's
    B row.

    Returns ``colptr`` [F_A+1] int64 and, per A entry in CSC order, ``vals`` (A's value),
    ``start`` int64 / ``length`` int32 (the token's row in B's CSR).  Counting sort:
    within a feature, tokens come out in increasing order, so every ``sxy`` cell is summed
    in token order whatever the chunking.  Storing the B row bounds here saves the scatter
    a dependent cache miss on ``b_indptr[t]`` per A entry.  Parallel over ``n_parts``
    token ranges: each counts its own entries per feature, and a prefix over (feature,
    part) gives every part its own output slots, so the result is the serial one.
    """
    n_rows = indptr.size - 1
    nnz = indptr[-1]
    rows = np.empty(n_parts + 1, np.int64)  # token ranges with about equal entries
    for k in range(n_parts + 1):
        rows[k] = np.searchsorted(indptr, nnz * k // n_parts)
    rows[0] = 0
    rows[n_parts] = n_rows
    counts = np.zeros((n_parts, n_cols), np.int64)
    for k in _nb.prange(n_parts):
        for p in range(indptr[rows[k]], indptr[rows[k + 1]]):
            counts[k, indices[p]] += 1
    colptr = np.empty(n_cols + 1, np.int64)
    acc = 0
    for c in range(n_cols):
        colptr[c] = acc
        for k in range(n_parts):
            cnt = counts[k, c]
            counts[k, c] = acc  # now: the part's next output slot in column c
            acc += cnt
    colptr[n_cols] = acc
    vals = np.empty(nnz, data.dtype)
    start = np.empty(nnz, np.int64)
    length = np.empty(nnz, np.int32)
    for k in _nb.prange(n_parts):
        nxt = counts[k]
        for r in range(rows[k], rows[k + 1]):
            b0 = b_indptr[r]
            bl = b_indptr[r + 1] - b0
            for p in range(indptr[r], indptr[r + 1]):
                c = indices[p]
                q = nxt[c]
                vals[q] = data[p]
                start[q] = b0
                length[q] = bl
                nxt[c] = q + 1
    return colptr, vals, start, length


@_njit
def _balanced_bounds(colptr, length, n_groups):  # pragma: no cover - compiled
    """Split A features into ``n_groups`` contiguous ranges of about equal work.

    Work of feature ``i`` = sum over its tokens of (nnz_B(t) + 8) (products + visit cost).
    """
    n = colptr.size - 1
    work = np.empty(n, np.float64)
    total = 0.0
    for i in range(n):
        w = 0.0
        for p in range(colptr[i], colptr[i + 1]):
            w += length[p] + 8.0
        work[i] = w
        total += w
    bounds = np.empty(n_groups + 1, np.int64)
    bounds[0] = 0
    g = 1
    acc = 0.0
    for i in range(n):
        acc += work[i]
        while g < n_groups and acc >= total * g / n_groups:
            bounds[g] = i + 1
            g += 1
    while g <= n_groups:
        bounds[g] = n
        g += 1
    return bounds


@_njit
def sparse_moments(indices, data, sx, sxx, nnz, stored, vmin, vmax):  # pragma: no cover
    """One pass over a CSR chunk's entries: per-feature sum, sum of squares, non-zero
    count, stored-entry count, min and max (all updated in place)."""
    for p in range(indices.size):
        j = indices[p]
        v = np.float64(data[p])
        sx[j] += v
        sxx[j] += v * v
        stored[j] += 1
        if v != 0.0:
            nnz[j] += 1
        if v < vmin[j]:
            vmin[j] = v
        if v > vmax[j]:
            vmax[j] = v


@_pjit
def _moments_and_pack(a_idx, a_val, a_sx, a_sxx, a_nnz, a_stored, a_vmin, a_vmax,
                      b_idx, b_val, b_sx, b_sxx, b_nnz, b_stored, b_vmin, b_vmax,
                      packed, packed_val):  # pragma: no cover - compiled
    """Both sides' moments (one task per side, so every sum stays in token order) and,
    as a third task, B's entries interleaved for the numba scatter: ``packed[2k]`` =
    index, ``packed_val[2k+1]`` = value, two views of one buffer (one stream instead of
    two)."""
    for s in _nb.prange(3):
        if s == 0:
            sparse_moments(a_idx, a_val, a_sx, a_sxx, a_nnz, a_stored, a_vmin, a_vmax)
        elif s == 1:
            sparse_moments(b_idx, b_val, b_sx, b_sxx, b_nnz, b_stored, b_vmin, b_vmax)
        else:
            for k in range(b_idx.size):
                packed[2 * k] = b_idx[k]
                packed_val[2 * k + 1] = b_val[k]


@_pjit
def _scatter_rows(S, colptr, vals, start, length, packed, packed_val, bounds, ahead, line,
                  s_ahead):  # pragma: no cover
    """``S[i, j] += a[t, i] * b[t, j]`` for all tokens t, feature-major over A.

    S: [F_A, F_B] float64 (C order).  (colptr, vals): A chunk as CSC; A entry ``p`` of
    feature ``i`` (``colptr[i] <= p < colptr[i+1]``) has value ``vals[p]`` and its token's
    B row is entries ``start[p] : start[p] + length[p]`` of B, interleaved: entry ``k``'s
    feature is ``packed[2k]`` and its value ``packed_val[2k+1]``.  bounds: A-feature
    ranges, one per parallel task; a task owns rows ``bounds[g]:bounds[g+1]`` of S, so
    there are no races and each cell is summed in token order (deterministic).
    ahead: prefetch distance in A entries (0: no prefetch); line: elements of ``packed``
    per cache line.  s_ahead: also prefetch the cells of row ``i`` that the A entry this
    many entries ahead will add to (0: off; pays where a row no longer fits in L1).
    """
    n_b = S.shape[1]
    flat = S.reshape(-1)
    n = vals.size
    for g in _nb.prange(bounds.size - 1):
        for i in range(bounds[g], bounds[g + 1]):
            row = flat[i * n_b : (i + 1) * n_b]
            for p in range(colptr[i], colptr[i + 1]):
                if ahead > 0 and p + ahead < n:
                    # ask for the B row needed a few tokens from now (hides its latency)
                    s2 = 2 * start[p + ahead]
                    for k in range(0, 2 * length[p + ahead], line):
                        _prefetch(packed, s2 + k)
                if s_ahead > 0 and p + s_ahead < colptr[i + 1]:
                    # the sxy cells that entry will update: scattered over a row too wide
                    # for L1, each would otherwise be a cache miss
                    s3 = 2 * start[p + s_ahead]
                    for k in range(0, 2 * length[p + s_ahead], 2):
                        _prefetch(row, np.uint32(packed[s3 + k]))
                a = np.float64(vals[p])
                s = 2 * start[p]
                e = 2 * length[p]
                bi = packed[s : s + e]  # views: the loop below then needs
                bv = packed_val[s : s + e]  # no negative-index wraparound code
                for k in range(0, e, 2):
                    row[np.uint32(bi[k])] += a * np.float64(bv[k + 1])


@_pjit
def zero_fill(S):  # pragma: no cover - compiled
    """``S[:] = 0`` in parallel slabs."""
    flat = S.reshape(-1)
    n = flat.size
    for c in _nb.prange(64):
        flat[n * c // 64 : n * (c + 1) // 64] = 0.0


@_njit
def _row_max8(r):  # pragma: no cover - compiled
    """max(r) with eight independent lanes: the compiler turns the inner loop into one
    vector max per eight values (a plain running max is a serial chain, ~3x slower)."""
    lanes = np.full(8, -np.inf)
    m = r.size - r.size % 8
    for j in range(0, m, 8):
        for k in range(8):
            x = r[j + k]
            lanes[k] = x if x > lanes[k] else lanes[k]
    best = -np.inf
    for k in range(8):
        best = lanes[k] if lanes[k] > best else best
    for j in range(m, r.size):
        best = r[j] if r[j] > best else best
    return best


@_njit
def _first_equal8(r, value):  # pragma: no cover - compiled
    """The smallest j with ``r[j] == value`` (-1 if none), testing eight values at a time."""
    m = r.size - r.size % 8
    for j in range(0, m, 8):
        hit = False
        for k in range(8):
            hit |= r[j + k] == value
        if hit:
            for k in range(8):
                if r[j + k] == value:
                    return j + k
    for j in range(m, r.size):
        if r[j] == value:
            return j
    return -1


@_pjit
def maxima(S, n, sx_a, inv_a, valid_a, sx_b, inv_b, neg_b, bounds):  # pragma: no cover
    """Row and column max/argmax of the Pearson matrix, computed on the fly from S.

    ``r_ij = clip((n S_ij - sx_a[i] sx_b[j]) inv_a[i] inv_b[j], -1, 1) + neg_b[j]`` where
    ``neg_b`` is 0 for valid B features and -inf for excluded ones (their ``inv_b`` and
    ``sx_b`` are 0, so the sum is exactly -inf).  Rows are independent; each parallel
    task keeps its own column maxima, merged in row order.  Returns (row_max [F_A] f64
    (-inf where none), row_arg [F_A] i64 (-1), col_max [F_B], col_arg [F_B]); ties go to
    the lowest index.
    """
    n_a, n_b = S.shape
    n_groups = bounds.size - 1
    row_max = np.full(n_a, -np.inf)
    row_arg = np.full(n_a, -1, np.int64)
    gmax = np.full((n_groups, n_b), -np.inf)
    garg = np.full((n_groups, n_b), -1, np.int64)
    for g in _nb.prange(n_groups):
        cmax = gmax[g]
        carg = garg[g]
        r = np.empty(n_b)
        for i in range(bounds[g], bounds[g + 1]):
            if not valid_a[i]:
                continue
            xs = sx_a[i]
            ui = inv_a[i]
            row = S[i]
            for j in range(n_b):  # vectorisable passes over one row
                v = (n * row[j] - xs * sx_b[j]) * ui * inv_b[j]
                r[j] = min(max(v, -1.0), 1.0) + neg_b[j]
            best = _row_max8(r)
            if best > -np.inf:
                row_arg[i] = _first_equal8(r, best)
                row_max[i] = best
            for j in range(n_b):
                gt = r[j] > cmax[j]
                cmax[j] = r[j] if gt else cmax[j]
                carg[j] = i if gt else carg[j]
    col_max = gmax[0].copy()
    col_arg = garg[0].copy()
    for g in range(1, n_groups):  # groups are in increasing i: strict > keeps the lowest i
        for j in range(n_b):
            if gmax[g, j] > col_max[j]:
                col_max[j] = gmax[g, j]
                col_arg[j] = garg[g, j]
    return row_max, row_arg, col_max, col_arg


class NumbaScatter(ScatterBackend):
    """The numba kernels over one buffer (see the module docstring): moments and B's packing,
    A's transpose, the balanced scatter.  ``n_threads``: numba threads for every kernel."""

    folds_moments = True

    def __init__(self, n_a: int, n_b: int, n_threads: int):
        self.n_a, self.n_b, self.n_threads = n_a, n_b, n_threads

    def add(self, sxy, a, b, side_a: dict, side_b: dict) -> None:
        sa, sb = side_a, side_b
        # B's (index, value) pairs interleaved in one buffer of the values' width: int32 +
        # float32 for float32 features (the products stay exact in float64 either way)
        width = np.int32 if b[2].dtype == np.float32 else np.int64
        packed = np.empty(2 * b[1].size, width)
        with numba_threads(self.n_threads):
            _moments_and_pack(a[1], a[2], sa["sx"], sa["sxx"], sa["nnz"], sa["stored"], sa["vmin"],
                              sa["vmax"], b[1], b[2], sb["sx"], sb["sxx"], sb["nnz"], sb["stored"],
                              sb["vmin"], sb["vmax"], packed, packed.view(b[2].dtype))
            if a[1].size == 0 or b[1].size == 0:
                return
            colptr, vals, start, length = _transpose_a(a[0], a[1], a[2], self.n_a, b[0],
                                                       max(1, self.n_threads))
            bounds = _balanced_bounds(colptr, length, 4 * self.n_threads)
            s_ahead = _cfg.SXY_PREFETCH_AHEAD if self.n_b * 8 >= _cfg.SXY_PREFETCH_ROW_BYTES else 0
            _scatter_rows(sxy, colptr, vals, start, length, packed, packed.view(b[2].dtype),
                          bounds, _cfg.PREFETCH_AHEAD, 64 // packed.itemsize, s_ahead)

    def zero(self, sxy) -> None:
        # one thread cannot saturate memory: 4.5 GiB in 0.50 s vs 0.31 s
        with numba_threads(self.n_threads):
            zero_fill(sxy)
