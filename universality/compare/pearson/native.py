"""The C CPU kernel (``csrc/pearson.c``): its ctypes binding, thread pool and scatter strategy.

For float32 features the sparse products are C, built at first use (no fast-math, so every sum
rounds as the numba kernels' do): A's buffered tokens transposed to feature-major order as
8-byte ``(token, value)`` records over feature ranges, B's indices narrowed to uint16 where
they fit, AVX-512 gather/scatter where the CPU has it, the next row of ``sxy`` prefetched.
The moments are folded into these passes and the buffer's checks (index range, NaN/inf,
canonical order) run in C too.  Python threads run the C calls (ctypes releases the GIL), and
a buffer's scatter runs on while the caller reads the next chunks.  Sums, moments and maxima
are bitwise the numba kernels', which stay the fallback (and take float64 features).

The tunables below, and the numba module's ``SXY_PREFETCH_*``, are read at call time: set
them on their modules (the sums do not change).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from universality.compare.pearson import numba_kernels as nk
from universality.compare.pearson.scatter import ScatterBackend

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


def _ptrs(t) -> tuple[int, int, int]:
    """Addresses of a float32 CSR triple's (indptr, indices, values)."""
    return _ptr(t[0], np.int64), _ptr(t[1], np.int32), _ptr(t[2], np.float32)


_MOMENT_DTYPES = {"sx": np.float64, "sxx": np.float64, "nnz": np.int64, "stored": np.int64,
                  "vmin": np.float64, "vmax": np.float64}


def _moment_ptrs(side: dict) -> list[int]:
    """Addresses of one side's moment arrays, in the order the C functions take them."""
    return [_ptr(side[k], dt) for k, dt in _MOMENT_DTYPES.items()]


def repair(t, n: int, name: str, code: int):
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


class NativeScatter(ScatterBackend):
    """The C kernel over one buffer of float32 features (``csrc/pearson.c`` has the steps);
    buffers with a float64 side go to the numba kernels after the same checks.

    ``lib``: :func:`native_kernels`; ``n_threads``: threads of the pool the C calls run on
    (1: inline).  Work buffers are reused across buffers (fresh pages cost a fault each), the
    ones the running scatter reads as the two halves of a double buffer."""

    folds_moments = True
    checks_float32 = True

    def __init__(self, lib, n_a: int, n_b: int, n_threads: int):
        self.lib, self.n_a, self.n_b, self.n_threads = lib, n_a, n_b, n_threads
        self._numba_scatter = None  # float64 buffers and large zero fills: built on first use
        self._wide = n_b > 65536  # B's indices do not fit uint16
        self._pending = None  # futures of the C scatter still running (see wait)
        self._scratch_bufs: dict = {}
        self._parity = 0  # which half of the double-buffered scratch the last buffer took

    def add(self, sxy, a, b, side_a: dict, side_b: dict) -> None:
        if a[2].dtype == np.float32 and b[2].dtype == np.float32:
            self._add_float32(sxy, a, b, side_a, side_b)
            return
        # its float32 side skipped the Python checks: C's run before numba takes the buffer
        a, b = self._checked(a, self.n_a, "A"), self._checked(b, self.n_b, "B")
        self.wait()  # the numba kernels write sxy
        self._numba().add(sxy, a, b, side_a, side_b)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        for f in pending or ():
            f.result()

    def zero(self, sxy) -> None:
        if sxy.size <= nk.NUMPY_MAX_CELLS:  # one thread fills it in milliseconds, no numba needed
            sxy.fill(0.0)
            return
        self._numba().zero(sxy)

    def _numba(self):
        """The numba strategy (imports numba: ~1.6 CPU s once per process, see numba_kernels)."""
        if self._numba_scatter is None:
            self._numba_scatter = nk.NumbaScatter(self.n_a, self.n_b, self.n_threads)
        return self._numba_scatter

    def _scratch(self, name: str, size: int, dtype) -> np.ndarray:
        """A reused work buffer of at least ``size`` elements (grown as needed)."""
        buf = self._scratch_bufs.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, int(1.25 * (0 if buf is None else buf.size))), dtype)
            self._scratch_bufs[name] = buf
        return buf[:size]

    def _checked(self, t, n: int, name: str):
        """``t`` checked (and repaired) by the C pass if it is float32 (its chunks skipped the
        Python checks); a float64 side as it is."""
        t = tuple(np.ascontiguousarray(x) for x in t)
        if t[2].dtype != np.float32:
            return t
        counts = np.zeros(n, np.int64)
        code = self.lib.pearson_count(*_ptrs(t), len(t[0]) - 1, n, counts.ctypes.data)
        return repair(t, n, name, code) if code else t

    def _add_float32(self, sxy, a, b, side_a: dict, side_b: dict) -> None:
        """A's count (with A's check), then tasks on the pool: A's transpose and B's check and
        moments (and its uint16 indices), each split over feature ranges; B's moments are
        committed once all succeeded; then the scatter over groups of A features of about
        equal work, which also sums A's moments from the transposed records.  A buffer that
        fails its check (NaN, index out of range) changes nothing."""
        pool = _pool(self.n_threads) if self.n_threads > 1 else None
        a = tuple(np.ascontiguousarray(x) for x in a)
        b = tuple(np.ascontiguousarray(x) for x in b)
        counts = np.zeros(self.n_a, np.int64)  # A -> CSC: counts (and A's check), slots, records
        code = self.lib.pearson_count(*_ptrs(a), len(a[0]) - 1, self.n_a, counts.ctypes.data)
        if code:
            a = repair(a, self.n_a, "A", code)
            counts[:] = 0
            self.lib.pearson_count(*_ptrs(a), len(a[0]) - 1, self.n_a, counts.ctypes.data)
        colptr = np.zeros(self.n_a + 1, np.int64)
        np.cumsum(counts, out=colptr[1:])
        # the scatter of the previous buffer may still read its records and B's indices: this
        # buffer's go to the other half of a double buffer (taken once the buffer is accepted,
        # so that a rejected one does not hand the running scatter's half to the next)
        half = 1 - self._parity
        ent = self._scratch(f"entries{half}", a[1].size, _ENTRY)
        b, idx16 = self._b_moments(b, side_b, self._fill_tasks(a, colptr, ent), pool, half)
        self._parity = half
        self._scatter(sxy, colptr, ent, counts, b, idx16, side_a, pool)

    def _fill_tasks(self, a, colptr: np.ndarray, ent: np.ndarray) -> list:
        """Tasks writing A's CSC records into ``ent`` [nnz_a] (``_ENTRY``), one per feature
        range: every task reads all of A's entries and writes only its features' records."""
        lib, nt = self.lib, self.n_threads
        ap, ai, av = _ptrs(a)
        n_rows = len(a[0]) - 1
        nxt = colptr[:-1].copy()
        cut = np.linspace(0, self.n_a, nt + 1).astype(np.int64)
        return [lambda k=k: lib.pearson_fill(ap, ai, av, n_rows, int(cut[k]), int(cut[k + 1]),
                                             nxt.ctypes.data, ent.ctypes.data) for k in range(nt)]

    def _b_moments(self, b, side_b: dict, fill: list, pool, half: int):
        """Run ``fill`` and B's check + moments (+ its uint16 indices) on the pool, repair B
        if its check asks for it, commit B's moments.  Returns (B's triple as checked, its
        uint16 indices [nnz_b] or None where they do not fit)."""
        lib, nt = self.lib, self.n_threads
        n_rows = len(b[0]) - 1
        b_mom = _moment_ptrs(side_b)
        tmp = self._scratch("moments", 8 * self.n_b, np.float64)
        cut = np.linspace(0, self.n_b, nt + 1).astype(np.int64)

        def tasks(t):
            # B's indices as uint16 where they fit: a narrower stream for the scatter,
            # written by the moments pass (its first task, the one that checks), which reads
            # them anyway
            idx16 = None if self._wide else self._scratch(f"b_idx16{half}", t[1].size, np.uint16)
            bp, bi, bv = _ptrs(t)
            return idx16, [lambda k=k: lib.pearson_moments(
                bp, bi, bv, n_rows, self.n_b, int(cut[k]), int(cut[k + 1]), *b_mom,
                tmp.ctypes.data, idx16.ctypes.data if (k == 0 and idx16 is not None) else None,
                int(k == 0)) for k in range(nt)]

        idx16, b_tasks = tasks(b)
        code = _run_tasks(pool, fill + b_tasks)[len(fill)]
        if code:  # B's check failed; nothing of B is committed yet
            b = repair(b, self.n_b, "B", code)
            idx16, b_tasks = tasks(b)
            _run_tasks(pool, b_tasks)
        lib.pearson_moments_commit(tmp.ctypes.data, self.n_b, *b_mom)
        return b, idx16

    def _scatter(self, sxy, colptr, ent, counts, b, idx16, side_a: dict, pool) -> None:
        """Start the scatter (and A's moments) over groups of A features of about equal work,
        once the previous buffer's has finished: on the pool it runs on (see :meth:`wait`)."""
        lib, n_rows = self.lib, len(b[0]) - 1
        # scatter work per A feature ~ its entries x (B's mean row + 8); groups are taken
        # dynamically, which absorbs the estimate's error
        bounds = _work_bounds(counts * (b[1].size / max(n_rows, 1) + 8.0), 4 * self.n_threads)
        s_ahead = nk.SXY_PREFETCH_AHEAD if self.n_b * 8 >= nk.SXY_PREFETCH_ROW_BYTES else 0
        row_min = 0 if s_ahead else ROW_PREFETCH_MIN_ENTRIES
        bp, bi, bv = _ptrs(b)
        a_mom = _moment_ptrs(side_a)
        args = (_ptr(sxy, np.float64), self.n_b, colptr.ctypes.data, ent.ctypes.data, bp,
                bi if self._wide else idx16.ctypes.data, int(self._wide), bv)
        # the tasks hold the arrays whose addresses they pass, so that nothing they write to or
        # read from is freed before they finish (even if the accumulator is dropped)
        keep = (sxy, colptr, ent, b, idx16, side_a)
        tasks = [lambda g=g, keep=keep: lib.pearson_scatter(
            *args, int(bounds[g]), int(bounds[g + 1]), s_ahead, row_min, NATIVE_VARIANT, *a_mom)
            for g in range(bounds.size - 1) if bounds[g + 1] > bounds[g]]
        self.wait()  # the previous buffer's scatter: rows of sxy may overlap this one's groups
        if pool is None:
            _run_tasks(None, tasks)
        else:  # runs on while the caller reads the next chunks; wait() collects it
            self._pending = [pool.submit(t) for t in tasks]
