"""Streaming Pearson correlation between two feature sets: the MPPC kernel.

For one layer pair (features of model A at layer ``la``, features of model B at layer ``lb``)
we stream the evaluation tokens in chunks and accumulate, per feature, ``sx = sum x`` and
``sxx = sum x^2``, and per feature pair ``sxy = sum x y``.  At the end

    r_ij = (N sxy_ij - sx_i sy_j) / sqrt((N sxx_i - sx_i^2) (N syy_j - sy_j^2))

and one pass over ``r`` gives the row maxima (A -> B: best B feature for every A feature)
and the column maxima (B -> A) with their argmax.  The full ``F_A x F_B`` Pearson matrix is
never materialised; only the ``sxy`` accumulator is (it is unavoidable).

Two input modes, one API (:class:`PearsonAccumulator`):

* **sparse** (SAE features, ReLU outputs that are mostly zero): chunks are CSR
  (``scipy.sparse`` matrices, or ``(indptr, indices, values)`` triples).  The cost is the
  number of products ``sum_t nnz_A(t) * nnz_B(t)``, not ``N * F_A * F_B``.  On CPU the
  kernel transposes A's buffered tokens to feature-major order (CSC) and, in parallel over
  blocks of A features (each thread owns whole rows of ``sxy``: no races, deterministic),
  adds ``a_ti * b_tj`` into ``sxy[i, j]`` for every token ``t`` where A feature ``i`` fires.
  Row ``i`` of ``sxy`` stays in cache while its tokens are processed.  For float32 features
  this is C (``csrc/pearson.c``, built at first use: AVX-512 gather/scatter, B's indices as
  uint16, the next row of ``sxy`` prefetched; Python threads run it, ctypes releasing the
  GIL); numba kernels do the same where no C compiler is found and for float64 features
  (B's (index, value) pairs as one interleaved stream, the B rows needed next prefetched).
  On GPU a CuPy ``RawKernel`` does the same outer products token-major with float64
  ``atomicAdd``.
* **dense** (neuron baseline: MLP neurons, gate activations; large offsets, F ~ 512-3072):
  chunks are ``[tokens, F]`` arrays.  Every feature is *shifted* by its mean on the first
  chunk before anything is summed (Pearson is shift invariant), so the sums are sums of small
  centred numbers and the final cancellation ``N sxy - sx sy`` loses nothing; each chunk's
  contribution is one matmul ``Xc^T Yc`` (BLAS / cuBLAS).

Precision.  ``sxy`` is float64 (``F_A * F_B * 8`` bytes: 4.8 GB at 24576^2).  A float32
accumulator would halve that but is not good enough: a frequent feature adds ~10^5..10^6
positive terms into one cell, the float32 rounding error of the running sum grows like
``sqrt(n) * 2^-24`` of the sum (~1e-4 relative at 10^6 terms) and the cancellation in
``N sxy - sx sy`` amplifies it further (see ``tests/test_pearson.py``, which shows a float32
accumulator failing the 1e-5 target on a case where this kernel passes).  Products of two
float32 values are exact in float64, so the sparse path's only rounding is float64 summation.
Per-feature sums are float64 too.

Excluded features.  A feature that never fires, or is constant, on the evaluation tokens has
no Pearson correlation.  Constancy is decided exactly from the running per-feature min and
max (including the implicit zeros of sparse inputs), not from a variance that rounding may
leave at 1e-17.  Excluded features get ``NaN`` / argmax ``-1`` in the results, are ignored as
match candidates, and are counted (``excluded_a``, ``excluded_b``).

Ties.  ``row_arg`` is the smallest ``j`` reaching the row maximum, ``col_arg`` the smallest
``i`` (exact float64 ties, e.g. duplicated features, resolve to the lower index).  The CPU
kernels sum every cell in token order, so results do not depend on chunking or thread count
(``sxy`` is bitwise identical).  On CUDA the ``atomicAdd`` order varies from run to run: sums
can differ in the last bit, so exact ties (duplicated features) may resolve either way there.

Backends: ``backend="cpu"`` (NumPy/SciPy + C / numba), ``"cuda"`` (CuPy), ``"auto"`` (CUDA when
CuPy imports and a GPU is visible).  Bookkeeping (moments, exclusion, finalisation) is written
once against the array module returned by :func:`get_xp`; only the hot scatter differs.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

try:  # numba is the fast CPU kernel; without it the CPU path falls back to scipy SpGEMM.
    import numba as _nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _nb = None
    HAVE_NUMBA = False

__all__ = [
    "PearsonAccumulator",
    "pearson_pair",
    "get_xp",
    "resolve_backend",
    "cuda_available",
    "aligned_chunks",
    "rolled_chunks",
    "roll_stream",
    "save_result",
    "load_result",
    "HAVE_NUMBA",
]


def default_buffer_tokens(n_b: int) -> int:
    """Tokens per sparse kernel call: more tokens = more reuse of each ``sxy`` row while it
    sits in cache, fewer = B's rows stay in cache.  Measured sweet spot ~4 * F_B, in [16k, 64k]."""
    return int(min(65536, max(16384, 4 * n_b)))

#: CPU kernel: software-prefetch the B row of the A entry this many entries ahead (0: off).
PREFETCH_AHEAD = 8
#: ... and the sxy cells it will update, this many entries ahead, when a row of sxy is at least
#: SXY_PREFETCH_ROW_BYTES wide.  Measured (2 threads, products/s): F_B = 4096 (32 KiB rows, in L1)
#: -35%; 8192 +10%; 16384 +45%; 24576 +50%.
SXY_PREFETCH_AHEAD = 2
SXY_PREFETCH_ROW_BYTES = 65536


# --------------------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------------------
def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


def resolve_backend(backend: str = "auto") -> str:
    """Map ``auto|cpu|cuda`` to ``cpu`` or ``cuda``; ``cuda`` fails loudly if unusable."""
    if backend not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "cpu":
        return "cpu"
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "backend='cuda' needs CuPy: install the gpu extra (pip install 'universality[gpu]', "
            "i.e. cupy-cuda12x) or use backend='cpu' / 'auto'"
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise RuntimeError(f"backend='cuda': CuPy is installed but no CUDA device is usable ({e})") from e
    if n < 1:
        raise RuntimeError("backend='cuda': CuPy is installed but no CUDA device is visible")
    return "cuda"


def get_xp(backend: str = "auto"):
    """The array module for ``backend``: :mod:`numpy` for CPU, :mod:`cupy` for CUDA."""
    if resolve_backend(backend) == "cuda":
        import cupy

        return cupy
    return np


def _to_host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


# --------------------------------------------------------------------------------------
# chunk helpers: a chunk is a dense [T, F] array, a scipy/cupyx sparse matrix, or a CSR
# triple (indptr, indices, values) of T rows.
# --------------------------------------------------------------------------------------
def _is_triple(c) -> bool:
    return isinstance(c, (tuple, list)) and len(c) == 3


def _is_sparse(c) -> bool:
    if _is_triple(c) or sp.issparse(c):
        return True
    mod = type(c).__module__
    return mod.startswith("cupyx.scipy.sparse")


def _strip_start(c):
    """Accept ``(start, block)`` items as yielded by ``store.iter_rows``."""
    if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], (int, np.integer)):
        return c[1]
    return c


def _as_array(c):
    """torch tensors and array-likes to a NumPy / CuPy array (no copy when possible)."""
    if hasattr(c, "detach") and hasattr(c, "cpu"):  # torch.Tensor
        c = c.detach().cpu()
        if str(c.dtype) == "torch.bfloat16":
            c = c.float()
        return c.numpy()
    if isinstance(c, np.ndarray) or type(c).__module__.startswith("cupy"):
        return c
    return np.asarray(c)


def _n_rows(c) -> int:
    return len(c[0]) - 1 if _is_triple(c) else int(c.shape[0])


def _slice_rows(c, r0: int, r1: int):
    if _is_triple(c):
        indptr, indices, values = c
        s, e = int(indptr[r0]), int(indptr[r1])
        return (indptr[r0 : r1 + 1] - indptr[r0], indices[s:e], values[s:e])
    if sp.issparse(c) and c.format != "csr":
        c = c.tocsr()
    return c[r0:r1]


def _to_triple(c):
    if _is_triple(c):
        return c
    c = c.tocsr()
    return (c.indptr, c.indices, c.data)


def _concat_rows(chunks: Sequence[Any]):
    """Concatenate chunks along tokens; dense stays dense, anything sparse becomes a triple."""
    if len(chunks) == 1:
        return chunks[0]
    if not any(_is_sparse(c) for c in chunks):
        xp = np if isinstance(chunks[0], np.ndarray) else __import__("cupy")
        return xp.concatenate(chunks, axis=0)
    trips = [_to_triple(c) if _is_sparse(c) else _to_triple(sp.csr_matrix(c)) for c in chunks]
    xp = np if isinstance(trips[0][0], np.ndarray) else __import__("cupy")
    offs = np.cumsum([0] + [int(t[0][-1]) for t in trips])
    indptr = xp.concatenate(
        [xp.asarray(t[0][: (None if k == len(trips) - 1 else -1)], dtype=xp.int64) + int(offs[k])
         for k, t in enumerate(trips)]
    )
    return (indptr, xp.concatenate([t[1] for t in trips]), xp.concatenate([t[2] for t in trips]))


# --------------------------------------------------------------------------------------
# numba CPU kernels
# --------------------------------------------------------------------------------------
if HAVE_NUMBA:
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
        PREFETCH_AHEAD = SXY_PREFETCH_AHEAD = 0

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
    def _sparse_moments(indices, data, sx, sxx, nnz, stored, vmin, vmax):  # pragma: no cover
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
                _sparse_moments(a_idx, a_val, a_sx, a_sxx, a_nnz, a_stored, a_vmin, a_vmax)
            elif s == 1:
                _sparse_moments(b_idx, b_val, b_sx, b_sxx, b_nnz, b_stored, b_vmin, b_vmax)
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
    def _zero_fill(S):  # pragma: no cover - compiled
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
    def _maxima(S, n, sx_a, inv_a, valid_a, sx_b, inv_b, neg_b, bounds):  # pragma: no cover
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


def default_threads() -> int:
    """CPU threads for the numba kernels: the CPUs this process may run on (SLURM-aware)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    if HAVE_NUMBA:
        n = min(n, _nb.config.NUMBA_NUM_THREADS)
    return max(1, n)


@contextlib.contextmanager
def _numba_threads(n: int):
    old = _nb.get_num_threads()
    _nb.set_num_threads(max(1, min(n, _nb.config.NUMBA_NUM_THREADS)))
    try:
        with _nb.parallel_chunksize(1):  # dynamic scheduling over the balanced groups
            yield
    finally:
        _nb.set_num_threads(old)


# --------------------------------------------------------------------------------------
# C CPU kernel (csrc/pearson.c): float32 features; numba stays the fallback
# --------------------------------------------------------------------------------------
#: C scatter variant: 1 = AVX-512 gather/scatter where compiled in (else scalar), 0 = scalar.
NATIVE_VARIANT = 1
#: C kernel, rows narrower than SXY_PREFETCH_ROW_BYTES: prefetch row i+1 of sxy while row i
#: is summed when feature i+1 has at least this many entries in the buffer (0: off).
ROW_PREFETCH_MIN_ENTRIES = 1
#: Record of one A entry in the C kernel's CSC buffer (``entry_t``): token, value.
_ENTRY = np.dtype([("tok", np.int32), ("val", np.float32)])
_pools: dict = {}


def native_kernels():
    """The compiled ``csrc/pearson.c`` (``ctypes.CDLL``, argument types set) or None (no
    compiler, or ``UNIVERSALITY_NATIVE=0``).  Built without fast-math so that every sum
    rounds as the numba kernels' do."""
    import ctypes

    from universality.core import native

    lib = native.load("pearson", ("-fno-fast-math", "-ffp-contract=off"))
    if lib is not None and lib.pearson_scatter.restype is not None:  # not configured yet
        P, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        sigs = {
            "pearson_count": [P, P, P, i64, i64, P],
            "pearson_fill": [P, P, P, i64, i64, i64, P, P],
            "pearson_moments": [P, P, P, i64, i64, i64, i64, P, P, P, P, P, P, P, P, i32],
            "pearson_moments_commit": [P, i64, P, P, P, P, P, P],
            "pearson_scatter": [P, i64, P, P, P, P, i32, P, i64, i64, i32, i64, i32,
                                P, P, P, P, P, P],
        }
        for name, argtypes in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
        lib.pearson_count.restype = lib.pearson_moments.restype = ctypes.c_int
    return lib


def _pool(n: int):
    """A process-wide pool of ``n`` threads (ctypes releases the GIL during a C call)."""
    from concurrent.futures import ThreadPoolExecutor

    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pearson")
    return _pools[n]


def _run_tasks(pool, tasks) -> list:
    """Run the callables on the pool (or inline without one); their results, in order (the
    first error is re-raised)."""
    if pool is None:
        return [t() for t in tasks]
    return [f.result() for f in [pool.submit(t) for t in tasks]]


def _work_bounds(work: np.ndarray, n_groups: int) -> np.ndarray:
    """Split features into ``n_groups`` contiguous ranges of about equal ``work`` (the rule of
    the numba ``_balanced_bounds``: group g ends after the first feature where the running
    work reaches g / n_groups of the total)."""
    cum = np.cumsum(work)
    total = cum[-1] if cum.size else 0.0
    bounds = np.searchsorted(cum, total * np.arange(n_groups + 1) / n_groups, side="left") + 1
    bounds[0], bounds[-1] = 0, work.size
    return np.minimum(bounds, work.size).astype(np.int64)


def _ptr(x: np.ndarray, dtype) -> int:
    """Address of ``x``'s data after checking what C will read (a wrong layout corrupts memory)."""
    if x.dtype != dtype or not x.flags.c_contiguous:
        raise TypeError(f"C kernel: expected a C-contiguous {np.dtype(dtype)} array, got {x.dtype}")
    return x.ctypes.data


# --------------------------------------------------------------------------------------
# CuPy GPU kernel
# --------------------------------------------------------------------------------------
_CUDA_SRC = r"""
extern "C" __global__ void outer_scatter_{T}(
    const long long* __restrict__ a_indptr, const int* __restrict__ a_idx, const {T}* __restrict__ a_val,
    const long long* __restrict__ b_indptr, const int* __restrict__ b_idx, const {T}* __restrict__ b_val,
    double* __restrict__ S, const long long n_b, const long long n_tokens)
{
    // one block per token t; its threads walk the nnz_A(t) x nnz_B(t) products
    const long long t = blockIdx.x;
    if (t >= n_tokens) return;
    const long long a0 = a_indptr[t], na = a_indptr[t + 1] - a0;
    const long long b0 = b_indptr[t], nb = b_indptr[t + 1] - b0;
    const long long total = na * nb;
    for (long long k = threadIdx.x; k < total; k += blockDim.x) {
        const long long p = a0 + k / nb, q = b0 + k % nb;
        atomicAdd(&S[(long long)a_idx[p] * n_b + b_idx[q]], (double)a_val[p] * (double)b_val[q]);
    }
}
"""
_cuda_kernels: dict = {}


def _cuda_outer_scatter(S, a, b):  # pragma: no cover - needs a GPU
    """GPU: ``S[i, j] += sum_t a[t, i] b[t, j]`` for CSR triples on the device (atomicAdd, fp64)."""
    import cupy

    ctype = "double" if a[2].dtype == cupy.float64 else "float"
    if ctype not in _cuda_kernels:
        src = _CUDA_SRC.replace("{T}", ctype)
        _cuda_kernels[ctype] = cupy.RawKernel(src, f"outer_scatter_{ctype}")
    kern = _cuda_kernels[ctype]
    n_tok = len(a[0]) - 1
    if n_tok == 0:
        return
    vt = cupy.float64 if ctype == "double" else cupy.float32
    args = (
        cupy.ascontiguousarray(a[0], dtype=cupy.int64),
        cupy.ascontiguousarray(a[1], dtype=cupy.int32),
        cupy.ascontiguousarray(a[2], dtype=vt),
        cupy.ascontiguousarray(b[0], dtype=cupy.int64),
        cupy.ascontiguousarray(b[1], dtype=cupy.int32),
        cupy.ascontiguousarray(b[2], dtype=vt),
        S,
        np.int64(S.shape[1]),
        np.int64(n_tok),
    )
    kern((n_tok,), (128,), args)


# --------------------------------------------------------------------------------------
# the accumulator
# --------------------------------------------------------------------------------------
class PearsonAccumulator:
    """Streaming Pearson sums for one (A features, B features) pair.

    Parameters
    ----------
    n_a, n_b:
        Number of features of A (rows of the result) and of B (columns).
    backend:
        ``"auto" | "cpu" | "cuda"`` (see :func:`resolve_backend`).
    mode:
        ``"auto"`` (sparse when the first A and B chunks are both sparse, else dense),
        ``"sparse"`` or ``"dense"``.  Chunks of the other kind are converted.
    dense_dtype:
        Precision of the per-chunk matmul in dense mode, ``"float64"`` (default, exact to
        ~1e-12) or ``"float32"`` (2x faster BLAS; per-chunk rounding ~1e-6 of the centred
        products, still accumulated across chunks in float64).
    buffer_tokens:
        Sparse mode: tokens gathered before one kernel call (memory ~ 24 bytes per nnz);
        default :func:`default_buffer_tokens`.
    n_threads:
        numba threads (CPU sparse path); default: the CPUs this process may use.
    cpu_kernel:
        ``"auto"`` (``native`` where it builds, else ``numba``, else ``scipy``),
        ``"native"`` (numba bookkeeping, the products in C: ``csrc/pearson.c``, AVX-512
        where the CPU has it; float64 features use the numba scatter), ``"numba"`` or
        ``"scipy"`` (per-buffer SpGEMM ``A^T B`` added into ``sxy``: the slow,
        dependency-free fallback).

    Memory: ``sxy`` is ``n_a * n_b`` float64 on the chosen device, allocated at the first
    update; everything else is O(n_a + n_b) plus the sparse buffer.
    """

    def __init__(
        self,
        n_a: int,
        n_b: int,
        backend: str = "auto",
        mode: str = "auto",
        dense_dtype: str = "float64",
        buffer_tokens: int | None = None,
        n_threads: int | None = None,
        cpu_kernel: str = "auto",
    ):
        if n_a < 1 or n_b < 1:
            raise ValueError(f"need at least one feature per side, got n_a={n_a}, n_b={n_b}")
        if mode not in ("auto", "sparse", "dense"):
            raise ValueError(f"mode must be auto|sparse|dense, got {mode!r}")
        if dense_dtype not in ("float64", "float32"):
            raise ValueError(f"dense_dtype must be float64|float32, got {dense_dtype!r}")
        if cpu_kernel not in ("auto", "native", "numba", "scipy"):
            raise ValueError(f"cpu_kernel must be auto|native|numba|scipy, got {cpu_kernel!r}")
        if cpu_kernel in ("native", "numba") and not HAVE_NUMBA:
            raise RuntimeError(f"cpu_kernel={cpu_kernel!r} but numba is not installed (pip install numba)")
        self._lib = native_kernels() if cpu_kernel in ("auto", "native") and HAVE_NUMBA else None
        if cpu_kernel == "native" and self._lib is None:
            raise RuntimeError("cpu_kernel='native' but csrc/pearson.c could not be built (see the "
                               "warning above; UNIVERSALITY_NATIVE=0 disables it)")
        self.n_a, self.n_b = int(n_a), int(n_b)
        self.backend = resolve_backend(backend)
        self.xp = get_xp(self.backend)
        self.mode = None if mode == "auto" else mode
        self.dense_dtype = dense_dtype
        self.buffer_tokens = int(buffer_tokens or default_buffer_tokens(self.n_b))
        self.n_threads = int(n_threads or default_threads())
        if cpu_kernel == "auto":
            cpu_kernel = "native" if self._lib is not None else ("numba" if HAVE_NUMBA else "scipy")
        self.cpu_kernel = cpu_kernel
        self._numba_path = self.backend == "cpu" and self.cpu_kernel in ("native", "numba")
        self._sxy = None
        self._pending = None  # futures of the C scatter still running (see _wait)
        self._scratch_bufs: dict = {}  # reused work buffers of the C kernel (see _scratch)
        self._parity = 0  # which half of the double-buffered scratch the next buffer takes
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all tokens (keeps, and zeroes, an already allocated ``sxy``)."""
        self._wait()
        self.n_tokens = 0
        self._side = {s: self._new_side(n) for s, n in (("a", self.n_a), ("b", self.n_b))}
        if self._sxy is not None:
            if self._numba_path:  # one thread cannot saturate memory: 4.5 GiB in 0.50 s vs 0.31 s
                with _numba_threads(self.n_threads):
                    _zero_fill(self._sxy)
            else:
                self._sxy.fill(0)
        self._buf: list = []
        self._buf_tokens = 0

    def _new_side(self, n: int) -> dict:
        xp = self.xp
        return {
            "shift": None,  # dense mode: per-feature shift (first-chunk mean), float64
            "sx": xp.zeros(n, xp.float64),  # sum of (x - shift)
            "sxx": xp.zeros(n, xp.float64),  # sum of (x - shift)^2
            "nnz": xp.zeros(n, xp.int64),  # tokens with x != 0
            "stored": xp.zeros(n, xp.int64),  # entries seen explicitly (dense: all tokens)
            "vmin": xp.full(n, xp.inf),  # min / max over explicit entries
            "vmax": xp.full(n, -xp.inf),
        }

    @property
    def sxy(self):
        """The ``[n_a, n_b]`` float64 sum of (shifted) products, on the backend's device."""
        self._flush()
        return self._sxy

    # -- input normalisation ---------------------------------------------------------------
    def _sparse_triple(self, c, n_feat: int, name: str):
        """Chunk -> canonical CSR triple on the device: (int64 indptr, int32 indices, values)."""
        xp = self.xp
        if not _is_sparse(c):
            c = _as_array(c)
            if c.ndim != 2 or c.shape[1] != n_feat:
                raise ValueError(f"{name} chunk has shape {c.shape}, expected [tokens, {n_feat}]")
            c = sp.csr_matrix(_to_host(c)) if self.backend == "cpu" else __import__(
                "cupyx.scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(xp.asarray(c))
        if _is_triple(c):
            indptr, indices, values = c
            n_rows = len(indptr) - 1
            if self.backend == "cpu":
                c = sp.csr_matrix((_to_host(values), _to_host(indices), _to_host(indptr)),
                                  shape=(n_rows, n_feat))
            else:
                import cupyx.scipy.sparse as csp

                c = csp.csr_matrix((xp.asarray(values), xp.asarray(indices), xp.asarray(indptr)),
                                   shape=(n_rows, n_feat))
        else:
            if c.shape[1] != n_feat:
                raise ValueError(f"{name} chunk has {c.shape[1]} features, expected {n_feat}")
            c = c.tocsr()
            if self.backend == "cuda" and sp.issparse(c):
                import cupyx.scipy.sparse as csp

                c = csp.csr_matrix(c)
            elif self.backend == "cpu" and not sp.issparse(c):
                c = c.get()
        # duplicates would corrupt sum x^2 and min/max.  The C kernel checks its float32
        # buffers itself, in passes it makes anyway (scipy's canonical test and NumPy's
        # isfinite here cost 5% of the stream at F = 4096)
        deferred = self.cpu_kernel == "native" and self.backend == "cpu" and c.data.dtype == np.float32
        if not deferred and not c.has_canonical_format:
            c = c.copy()
            c.sum_duplicates()
        data = c.data
        if data.dtype not in (xp.float32, xp.float64):
            data = data.astype(xp.float32)
        indptr = xp.asarray(c.indptr, dtype=xp.int64)
        indices = xp.asarray(c.indices, dtype=xp.int32)
        if not deferred and data.size and not bool(xp.isfinite(data).all()):
            raise ValueError(f"{name} chunk contains NaN or inf")
        return indptr, indices, data

    def _dense_array(self, c, n_feat: int, name: str):
        xp = self.xp
        if _is_sparse(c):
            if _is_triple(c):
                indptr, indices, values = (_to_host(v) for v in c)
                c = sp.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, n_feat))
            c = c.toarray()
        c = xp.asarray(_as_array(c))
        if c.ndim != 2 or c.shape[1] != n_feat:
            raise ValueError(f"{name} chunk has shape {tuple(c.shape)}, expected [tokens, {n_feat}]")
        if not bool(xp.isfinite(c).all()):
            raise ValueError(f"{name} chunk contains NaN or inf")
        return c

    # -- streaming ---------------------------------------------------------------------------
    def update(self, a_chunk, b_chunk) -> None:
        """Add one chunk of tokens.  ``a_chunk`` [T, n_a] and ``b_chunk`` [T, n_b] must cover
        the same T tokens in the same order (CSR matrix, CSR triple, or dense array)."""
        a_chunk, b_chunk = _strip_start(a_chunk), _strip_start(b_chunk)
        if self.mode is None:
            self.mode = "sparse" if (_is_sparse(a_chunk) and _is_sparse(b_chunk)) else "dense"
        ta, tb = _n_rows(a_chunk), _n_rows(b_chunk)
        if ta != tb:
            raise ValueError(f"A chunk has {ta} tokens but B chunk has {tb}: chunks must cover the "
                             "same tokens (pearson_pair/aligned_chunks re-align uneven chunks)")
        if ta == 0:
            return
        if self._sxy is None:
            self._sxy = self.xp.zeros((self.n_a, self.n_b), self.xp.float64)
        if self.mode == "sparse":
            a = self._sparse_triple(a_chunk, self.n_a, "A")
            b = self._sparse_triple(b_chunk, self.n_b, "B")
            if not self._numba_path:  # the numba path sums moments per buffer (_flush)
                self._moments_sparse(self._side["a"], a, self.n_a)
                self._moments_sparse(self._side["b"], b, self.n_b)
            self._buf.append((a, b))
            self._buf_tokens += ta
            self.n_tokens += ta
            if self._buf_tokens >= self.buffer_tokens:
                self._flush(wait=False)
        else:
            a = self._dense_array(a_chunk, self.n_a, "A")
            b = self._dense_array(b_chunk, self.n_b, "B")
            ac = self._moments_dense(self._side["a"], a)
            bc = self._moments_dense(self._side["b"], b)
            if self.dense_dtype == "float32":
                self._sxy += (ac.astype(self.xp.float32).T @ bc.astype(self.xp.float32))
            else:
                self._sxy += ac.T @ bc
            self.n_tokens += ta

    def _moments_sparse(self, side: dict, trip, n: int) -> None:
        xp = self.xp
        _, idx, val = trip
        if xp is np and HAVE_NUMBA:
            _sparse_moments(idx, val, side["sx"], side["sxx"], side["nnz"], side["stored"],
                            side["vmin"], side["vmax"])
            return
        v64 = val.astype(xp.float64)
        side["sx"] += xp.bincount(idx, weights=v64, minlength=n)
        side["sxx"] += xp.bincount(idx, weights=v64 * v64, minlength=n)
        side["nnz"] += xp.bincount(idx[val != 0], minlength=n)
        side["stored"] += xp.bincount(idx, minlength=n)
        _scatter_minmax(xp, side["vmin"], side["vmax"], idx, v64)

    def _moments_dense(self, side: dict, x):
        """Update moments with a dense chunk; returns the shifted chunk (float64)."""
        xp = self.xp
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

    def _flush(self, wait: bool = True) -> None:
        """Run the sparse kernel over the buffered tokens.  ``wait=False`` (from ``update``)
        lets the C kernel's scatter run on while the caller reads the next chunks."""
        if not self._buf:
            if wait:
                self._wait()
            return
        a = _concat_rows([p[0] for p in self._buf])
        b = _concat_rows([p[1] for p in self._buf])
        n_buf = self._buf_tokens
        self._buf, self._buf_tokens = [], 0
        if self._numba_path:
            try:
                self._flush_numba(a, b)
            except ValueError:  # the C check rejected the buffer: it is dropped, sums untouched
                self.n_tokens -= n_buf
                raise
            if wait:
                self._wait()
            return
        if a[1].size == 0 or b[1].size == 0:
            return
        if self.backend == "cuda":
            _cuda_outer_scatter(self._sxy, a, b)
        else:  # scipy SpGEMM fallback
            n_t = len(a[0]) - 1
            am = sp.csr_matrix((a[2].astype(np.float64), a[1], a[0]), shape=(n_t, self.n_a))
            bm = sp.csr_matrix((b[2].astype(np.float64), b[1], b[0]), shape=(n_t, self.n_b))
            c = (am.T.tocsr() @ bm).tocoo()
            self._sxy[c.row, c.col] += c.data  # SpGEMM output has no duplicate (i, j)

    def _flush_numba(self, a, b) -> None:
        """CPU kernels over one buffer: the C kernel for float32 features where it is built
        (``cpu_kernel="native"``), else numba: moments and B's packing, A's transpose, the
        scatter."""
        sa, sb = self._side["a"], self._side["b"]
        if self.cpu_kernel == "native":
            if a[2].dtype == np.float32 and b[2].dtype == np.float32:
                self._flush_native(a, b)
                return
            a, b = self._checked(a, self.n_a, "A"), self._checked(b, self.n_b, "B")
        self._wait()  # the numba kernels below write sxy
        # B's (index, value) pairs interleaved in one buffer of the values' width: int32 +
        # float32 for float32 features (the products stay exact in float64 either way)
        width = np.int32 if b[2].dtype == np.float32 else np.int64
        packed = np.empty(2 * b[1].size, width)
        with _numba_threads(self.n_threads):
            _moments_and_pack(a[1], a[2], sa["sx"], sa["sxx"], sa["nnz"], sa["stored"], sa["vmin"],
                              sa["vmax"], b[1], b[2], sb["sx"], sb["sxx"], sb["nnz"], sb["stored"],
                              sb["vmin"], sb["vmax"], packed, packed.view(b[2].dtype))
            if a[1].size == 0 or b[1].size == 0:
                return
            colptr, vals, start, length = _transpose_a(a[0], a[1], a[2], self.n_a, b[0],
                                                       max(1, self.n_threads))
            bounds = _balanced_bounds(colptr, length, 4 * self.n_threads)
            s_ahead = SXY_PREFETCH_AHEAD if self.n_b * 8 >= SXY_PREFETCH_ROW_BYTES else 0
            _scatter_rows(self._sxy, colptr, vals, start, length, packed, packed.view(b[2].dtype),
                          bounds, PREFETCH_AHEAD, 64 // packed.itemsize, s_ahead)

    def _wait(self) -> None:
        """Wait for the C scatter still running from the last buffer (re-raising its error)."""
        pending, self._pending = self._pending, None
        for f in pending or ():
            f.result()

    def _scratch(self, name: str, size: int, dtype) -> np.ndarray:
        """A reused work buffer of at least ``size`` elements (grown as needed): buffers of
        this size are allocated per flush, and fresh pages cost a fault each on first use."""
        buf = self._scratch_bufs.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, int(1.25 * (0 if buf is None else buf.size))), dtype)
            self._scratch_bufs[name] = buf
        return buf[:size]

    @staticmethod
    def _repair(t, n: int, name: str, code: int):
        """Act on a C check code for triple ``t`` (see ``csrc/pearson.c``): errors name the
        side; a non-canonical buffer comes back with its duplicates summed and rows sorted."""
        if code == 2:
            raise ValueError(f"{name} chunk has a feature index outside [0, {n})")
        if code == 3:
            raise ValueError(f"{name} chunk contains NaN or inf")
        # a copy: the arrays may be the caller's, and sum_duplicates works in place
        m = sp.csr_matrix((t[2], t[1], t[0]), shape=(len(t[0]) - 1, n), copy=True)
        m.sum_duplicates()  # sorts too
        return m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data

    def _checked(self, t, n: int, name: str):
        """``t`` checked (and repaired) by the C pass, for a float32 side the numba kernel
        takes (the other side is float64): its chunks skipped the Python checks."""
        t = tuple(np.ascontiguousarray(x) for x in t)
        if t[2].dtype != np.float32:
            return t
        counts = np.zeros(n, np.int64)
        code = self._lib.pearson_count(_ptr(t[0], np.int64), _ptr(t[1], np.int32),
                                       _ptr(t[2], np.float32), len(t[0]) - 1, n, counts.ctypes.data)
        return self._repair(t, n, name, code) if code else t

    def _flush_native(self, a, b) -> None:
        """C kernel over one buffer of float32 features (``csrc/pearson.c`` has the steps).

        A's count (with the buffer's check), then tasks on ``n_threads`` threads: A's
        transpose and B's check and moments (and its uint16 indices), each split over feature
        ranges; B's moments are committed once all succeeded; then the scatter over groups of A
        features of about equal work, which also sums A's moments from the transposed
        records.  A buffer that fails its check (NaN, index out of range) changes nothing."""
        lib, nt = self._lib, self.n_threads
        pool = _pool(nt) if nt > 1 else None
        sa, sb = self._side["a"], self._side["b"]
        keys = ("sx", "sxx", "nnz", "stored", "vmin", "vmax")
        dts = (np.float64, np.float64, np.int64, np.int64, np.float64, np.float64)
        a_mom = [_ptr(sa[k], dt) for k, dt in zip(keys, dts)]
        b_mom = [_ptr(sb[k], dt) for k, dt in zip(keys, dts)]
        a = tuple(np.ascontiguousarray(x) for x in a)
        b = tuple(np.ascontiguousarray(x) for x in b)
        n_rows = len(a[0]) - 1

        def ptrs(t):
            return _ptr(t[0], np.int64), _ptr(t[1], np.int32), _ptr(t[2], np.float32)

        # A -> CSC: counts (and A's check), slots, then the records (token, value)
        counts = np.zeros(self.n_a, np.int64)
        code = lib.pearson_count(*ptrs(a), n_rows, self.n_a, counts.ctypes.data)
        if code:
            a = self._repair(a, self.n_a, "A", code)
            counts[:] = 0
            lib.pearson_count(*ptrs(a), n_rows, self.n_a, counts.ctypes.data)
        ap, ai, av = ptrs(a)
        colptr = np.zeros(self.n_a + 1, np.int64)
        np.cumsum(counts, out=colptr[1:])
        nxt = colptr[:-1].copy()
        # the scatter of the previous buffer may still read its records and B's indices:
        # this buffer's go to the other half of a double buffer
        self._parity = side = 1 - self._parity
        ent = self._scratch(f"entries{side}", a[1].size, _ENTRY)
        tmp = self._scratch("moments", 8 * self.n_b, np.float64)
        # B's indices as uint16 where they fit: a narrower stream for the scatter, written by
        # the moments pass, which reads them anyway
        wide = self.n_b > 65536
        a_cut = np.linspace(0, self.n_a, nt + 1).astype(np.int64)
        b_cut = np.linspace(0, self.n_b, nt + 1).astype(np.int64)
        # every task reads all entries of its side and writes only its features
        fill = [lambda k=k: lib.pearson_fill(ap, ai, av, n_rows, int(a_cut[k]), int(a_cut[k + 1]),
                                             nxt.ctypes.data, ent.ctypes.data) for k in range(nt)]

        def b_tasks(t, idx16):
            bp_, bi_, bv_ = ptrs(t)
            return [lambda k=k: lib.pearson_moments(
                bp_, bi_, bv_, n_rows, self.n_b, int(b_cut[k]), int(b_cut[k + 1]), *b_mom,
                tmp.ctypes.data, idx16.ctypes.data if (k == 0 and idx16 is not None) else None,
                int(k == 0)) for k in range(nt)]

        idx16 = None if wide else self._scratch(f"b_idx16{side}", b[1].size, np.uint16)
        code = _run_tasks(pool, fill + b_tasks(b, idx16))[nt]
        if code:  # B's check failed; nothing of B is committed yet
            b = self._repair(b, self.n_b, "B", code)
            idx16 = None if wide else self._scratch(f"b_idx16{side}", b[1].size, np.uint16)
            _run_tasks(pool, b_tasks(b, idx16))
        lib.pearson_moments_commit(tmp.ctypes.data, self.n_b, *b_mom)
        # scatter work per A feature ~ its entries x (B's mean row + 8); groups are taken
        # dynamically, which absorbs the estimate's error
        bounds = _work_bounds(counts * (b[1].size / max(n_rows, 1) + 8.0), 4 * nt)
        s_ahead = SXY_PREFETCH_AHEAD if self.n_b * 8 >= SXY_PREFETCH_ROW_BYTES else 0
        row_min = 0 if s_ahead else ROW_PREFETCH_MIN_ENTRIES
        bp, bi, bv = ptrs(b)
        args = (_ptr(self._sxy, np.float64), self.n_b, colptr.ctypes.data, ent.ctypes.data, bp,
                bi if wide else idx16.ctypes.data, int(wide), bv)
        # the tasks hold the arrays whose addresses they pass, so that nothing they write to or
        # read from is freed before they finish (even if the accumulator is dropped)
        keep = (self._sxy, colptr, ent, b, idx16, sa)
        tasks = [lambda g=g, keep=keep: lib.pearson_scatter(
            *args, int(bounds[g]), int(bounds[g + 1]), s_ahead, row_min, NATIVE_VARIANT, *a_mom)
            for g in range(bounds.size - 1) if bounds[g + 1] > bounds[g]]
        self._wait()  # the previous buffer's scatter: rows of sxy may overlap this one's groups
        if pool is None:
            _run_tasks(None, tasks)
        else:  # runs on while the caller reads the next chunks; _wait() collects it
            self._pending = [pool.submit(t) for t in tasks]

    # -- results ---------------------------------------------------------------------------
    def _finish_side(self, side: dict) -> dict:
        """Exact exclusion masks and 1/sqrt(N var) from the running sums."""
        xp = self.xp
        n = self.n_tokens
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

    def result(self) -> dict:
        """Row/column maxima of the Pearson matrix and the per-feature moments.

        Keys (NumPy arrays on the host):
          ``row_max`` [n_a] float32 (NaN: excluded A feature or no valid B feature),
          ``row_arg`` [n_a] int32 (-1), ``col_max`` [n_b] float32, ``col_arg`` [n_b] int32,
          ``n_tokens``, ``excluded_a``/``excluded_b`` (counts), ``never_fired_a``/``_b``,
          ``constant_a``/``_b``, ``valid_a``/``valid_b`` (bool masks), and per-feature
          ``mean_a, std_a, sum_a, sumsq_a, nnz_a, min_a, max_a`` (same for ``_b``).
        """
        self._flush()
        fa, fb = self._finish_side(self._side["a"]), self._finish_side(self._side["b"])
        n = float(self.n_tokens)
        if self._sxy is None:  # no tokens yet: every feature is excluded, nothing to scan
            rmax, rarg = np.full(self.n_a, -np.inf), np.full(self.n_a, -1)
            cmax, carg = np.full(self.n_b, -np.inf), np.full(self.n_b, -1)
        elif self.backend == "cpu" and HAVE_NUMBA:
            groups = max(1, 4 * self.n_threads)
            bounds = np.linspace(0, self.n_a, groups + 1).astype(np.int64)
            with _numba_threads(self.n_threads):
                neg_b = np.where(fb["valid"], 0.0, -np.inf)
                sx_b = np.where(fb["valid"], fb["sx"], 0.0)
                rmax, rarg, cmax, carg = _maxima(self._sxy, n, fa["sx"], fa["inv"], fa["valid"],
                                                 sx_b, fb["inv"], neg_b, bounds)
        else:
            rmax, rarg, cmax, carg = _maxima_xp(self.xp, self._sxy, n, fa, fb)
        rmax, rarg, cmax, carg = (_to_host(v) for v in (rmax, rarg, cmax, carg))
        out = {
            "row_max": np.where(np.isfinite(rmax), rmax, np.nan).astype(np.float32),
            "row_arg": np.where(np.isfinite(rmax), rarg, -1).astype(np.int32),
            "col_max": np.where(np.isfinite(cmax), cmax, np.nan).astype(np.float32),
            "col_arg": np.where(np.isfinite(cmax), carg, -1).astype(np.int32),
            "n_tokens": int(self.n_tokens),
            "mode": str(self.mode),
            "backend": self.backend,
        }
        for s, f in (("a", fa), ("b", fb)):
            out[f"valid_{s}"] = _to_host(f["valid"]).astype(bool)
            out[f"excluded_{s}"] = int((~out[f"valid_{s}"]).sum())
            out[f"never_fired_{s}"] = f["never"]
            out[f"constant_{s}"] = f["const"]
            for k, v in f["moments"].items():
                out[f"{k}_{s}"] = _to_host(v)
        return out

    def pearson_matrix(self) -> np.ndarray:
        """The full ``[n_a, n_b]`` float64 Pearson matrix (NaN rows/columns for excluded
        features).  For small problems and tests: it materialises ``n_a * n_b`` values."""
        self._flush()
        xp = self.xp
        fa, fb = self._finish_side(self._side["a"]), self._finish_side(self._side["b"])
        n = float(self.n_tokens)
        sxy = self._sxy if self._sxy is not None else xp.zeros((self.n_a, self.n_b))
        r = (n * sxy - fa["sx"][:, None] * fb["sx"][None, :]) * fa["inv"][:, None] * fb["inv"][None, :]
        r = xp.clip(r, -1.0, 1.0)
        r = xp.where(fa["valid"][:, None] & fb["valid"][None, :], r, xp.nan)
        return _to_host(r)


def _scatter_minmax(xp, vmin, vmax, idx, val) -> None:
    """``vmin[idx] = min(vmin[idx], val)`` (and max) with repeated indices, NumPy or CuPy."""
    try:
        xp.minimum.at(vmin, idx, val)
        xp.maximum.at(vmax, idx, val)
    except (AttributeError, NotImplementedError):  # pragma: no cover - older CuPy
        import cupyx

        cupyx.scatter_min(vmin, idx, val)
        cupyx.scatter_max(vmax, idx, val)


def _maxima_xp(xp, sxy, n: float, fa: dict, fb: dict, block_rows: int = 1024):
    """Array-module version of the numba ``_maxima`` (GPU, and CPU without numba).

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


# --------------------------------------------------------------------------------------
# streaming helpers
# --------------------------------------------------------------------------------------
def aligned_chunks(a_source: Iterable, b_source: Iterable) -> Iterator[tuple[Any, Any]]:
    """Pair two chunk streams over the same tokens whose chunk boundaries may differ.

    Yields ``(a_part, b_part)`` with equal row counts; raises if one stream has more tokens.
    """
    ia, ib = iter(a_source), iter(b_source)
    a = b = None
    while True:
        if a is None:
            a = next(ia, None)
            a = None if a is None else _strip_start(a)
        if b is None:
            b = next(ib, None)
            b = None if b is None else _strip_start(b)
        if a is None or b is None:
            rest_a = (0 if a is None else _n_rows(a)) + sum(_n_rows(_strip_start(c)) for c in ia)
            rest_b = (0 if b is None else _n_rows(b)) + sum(_n_rows(_strip_start(c)) for c in ib)
            if rest_a or rest_b:
                raise ValueError(f"token streams differ in length: {rest_a} A rows vs {rest_b} "
                                 "B rows left over")
            return
        na, nb = _n_rows(a), _n_rows(b)
        if na == 0:
            a = None
            continue
        if nb == 0:
            b = None
            continue
        k = min(na, nb)
        yield (a if k == na else _slice_rows(a, 0, k)), (b if k == nb else _slice_rows(b, 0, k))
        a = None if k == na else _slice_rows(a, k, na)
        b = None if k == nb else _slice_rows(b, k, nb)


def pearson_pair(
    a_source: Iterable,
    b_source: Iterable,
    n_a: int | None = None,
    n_b: int | None = None,
    **kwargs,
) -> dict:
    """Stream two iterables of chunks over the same tokens; return ``result()``.

    ``n_a``/``n_b`` default to the width of the first chunk (required for CSR triples).
    Chunk boundaries need not agree (see :func:`aligned_chunks`).  ``kwargs`` go to
    :class:`PearsonAccumulator` (``backend``, ``mode``, ``dense_dtype``, ...).
    """
    pairs = aligned_chunks(a_source, b_source)
    first = next(pairs, None)
    if first is None:
        if n_a is None or n_b is None:
            raise ValueError("empty token streams and no n_a/n_b given")
        return PearsonAccumulator(n_a, n_b, **kwargs).result()

    def width(c, given, name):
        if given is not None:
            return int(given)
        if _is_triple(c):
            raise ValueError(f"{name} chunks are CSR triples: pass n_{name.lower()} explicitly")
        return int(c.shape[1])

    acc = PearsonAccumulator(width(first[0], n_a, "A"), width(first[1], n_b, "B"), **kwargs)
    acc.update(*first)
    for a, b in pairs:
        acc.update(a, b)
    return acc.result()


def rolled_chunks(source, offset: int, chunk_rows: int, n_rows: int | None = None) -> Iterator[Any]:
    """Yield ``source`` rows in circularly shifted order: chunk k holds rows
    ``(k * chunk_rows + offset + r) mod N``.

    Pairing A's chunks (in natural order) with these pairs token t of A with token
    ``(t + offset) mod N`` of B: the permutation null.  ``source`` is anything row-sliceable
    with ``shape[0]`` (ndarray, scipy CSR, zarr array), or a callable ``get(start, stop)``
    with ``n_rows`` given.  Reads at most two slices per chunk; never loads all of B.
    """
    if callable(source) and not hasattr(source, "shape"):
        if n_rows is None:
            raise ValueError("rolled_chunks: pass n_rows with a callable source")
        get = source
    else:
        n_rows = int(source.shape[0]) if n_rows is None else int(n_rows)

        def get(s, e):
            return source[s:e]

    if n_rows == 0:
        return
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    offset %= n_rows
    for start in range(0, n_rows, chunk_rows):
        length = min(chunk_rows, n_rows - start)
        s = (start + offset) % n_rows
        if s + length <= n_rows:
            yield get(s, s + length)
        else:
            yield _concat_rows([get(s, n_rows), get(0, s + length - n_rows)])


def roll_stream(chunks: Iterable, offset: int, n_rows: int) -> Iterator[Any]:
    """Streaming version of :func:`rolled_chunks` for a one-pass iterable of chunks.

    Rows ``offset..N-1`` are yielded as they arrive, then the buffered rows ``0..offset-1``.
    Memory: the first ``offset`` rows are held (use :func:`rolled_chunks` when the source is
    random-access).  Output chunk boundaries follow the input's (re-align with
    :func:`aligned_chunks`, which :func:`pearson_pair` does).
    """
    offset %= n_rows
    head: list = []
    pos = 0
    for c in chunks:
        c = _strip_start(c)
        m = _n_rows(c)
        lo, hi = pos, pos + m
        pos = hi
        if hi <= offset:
            head.append(c)
        elif lo >= offset:
            yield c
        else:
            head.append(_slice_rows(c, 0, offset - lo))
            yield _slice_rows(c, offset - lo, m)
    if pos != n_rows:
        raise ValueError(f"roll_stream: stream had {pos} rows, expected n_rows={n_rows}")
    yield from head


# --------------------------------------------------------------------------------------
# on-disk form (pearson/{comparison}/A{la}_B{lb}.npz)
# --------------------------------------------------------------------------------------
def save_result(path, result: dict, **extra) -> None:
    """Write a :meth:`PearsonAccumulator.result` dict (plus ``extra`` scalars) as ``.npz``,
    atomically."""
    from universality.core.store import atomic_output

    arrays = {k: np.asarray(v) for k, v in {**result, **extra}.items()}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_result(path) -> dict:
    """Read a file written by :func:`save_result` (0-d arrays back to Python scalars)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
