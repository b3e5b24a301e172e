"""The numba CPU kernels (and the scatter strategy built from them).

They serve where ``csrc/pearson.c`` is not built (no C compiler, ``UNIVERSALITY_NATIVE=0``)
and for float64 features; their bookkeeping kernels (moments, zero fill, maxima) serve the C
path too.  Per buffer of tokens: both sides' moments and B's (index, value) pairs packed into
one interleaved stream (:func:`_moments_and_pack`); A's CSR transposed to feature-major order,
every entry tagged with its token's B row (:func:`_transpose_a`); A's features cut into
groups of about equal work (:func:`_balanced_bounds`); then, in parallel over the groups (a
thread owns whole rows of ``sxy``: no races, deterministic), ``sxy[i, j] += a_ti * b_tj`` for
every token ``t`` where A feature ``i`` fires (:func:`_scatter_rows`), the B rows needed next
prefetched.  Row ``i`` of ``sxy`` stays in cache while its tokens are processed.  Every cell is
summed in token order, so ``sxy`` does not depend on chunking or thread count.

The tunables below are read at call time: set them on this module (tests switch the
prefetches off this way; the sums do not change).

Importing this module does not import numba: the kernels live in :mod:`.numba_impl`, loaded
(and their cached machine code read) on the first access to one of them through this module
(``nk.maxima``, ``nk.NumbaScatter``, ...). Why: numba's import and the first call of a
cached kernel cost ~1.6 CPU s per process (measured: 0.5 s import, 1.1 s target set-up), more
than a default-sized layer pair's whole Pearson pass, whose float32 path (C scatter, NumPy
maxima for small matrices) needs no numba at all.
"""
from __future__ import annotations
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys

#: numba is installed (checked without importing it); without it the CPU path falls back to
#: SciPy SpGEMM.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

#: CPU kernel: software-prefetch the B row of the A entry this many entries ahead (0: off).
PREFETCH_AHEAD = 8
#: ... and the sxy cells it will update, this many entries ahead, when a row of sxy is at least
#: SXY_PREFETCH_ROW_BYTES wide.  Measured (2 threads, products/s): F_B = 4096 (32 KiB rows, in L1)
#: -35%; 8192 +10%; 16384 +45%; 24576 +50%.
SXY_PREFETCH_AHEAD = 2
SXY_PREFETCH_ROW_BYTES = 65536

#: An ``sxy`` of up to this many cells (32 MiB of float64; a default-sized 1024 x 1024 pair has
#: 1M) is zeroed and scanned for its maxima by NumPy, a larger one by the numba kernels: below
#: it, loading numba costs more than its parallel passes save.
NUMPY_MAX_CELLS = 1 << 22

#: What :mod:`.numba_impl` provides (loaded on first access).
_KERNELS = frozenset({"NumbaScatter", "sparse_moments", "zero_fill", "maxima"})


def __getattr__(name: str):
    if name in _KERNELS:
        if not HAVE_NUMBA:
            raise AttributeError(f"numba kernel {name!r}: numba is not installed (pip install numba)")
        return getattr(importlib.import_module("universality.compare.pearson.numba_impl"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _numba_max_threads() -> int | None:
    """numba's thread-pool size, without importing numba when it is not loaded yet (its
    default is the CPU count, or ``NUMBA_NUM_THREADS``)."""
    if "numba" in sys.modules:
        return sys.modules["numba"].config.NUMBA_NUM_THREADS
    env = os.environ.get("NUMBA_NUM_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


def default_threads() -> int:
    """CPU threads for the numba kernels: the CPUs this process may run on (SLURM-aware)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    if HAVE_NUMBA:
        n = min(n, _numba_max_threads())
    return max(1, n)


@contextlib.contextmanager
def numba_threads(n: int):
    """Run the numba kernels inside on ``n`` threads (capped at numba's pool), groups handed
    out one at a time."""
    import numba as _nb

    old = _nb.get_num_threads()
    _nb.set_num_threads(max(1, min(n, _nb.config.NUMBA_NUM_THREADS)))
    try:
        with _nb.parallel_chunksize(1):  # dynamic scheduling over the balanced groups
            yield
    finally:
        _nb.set_num_threads(old)
