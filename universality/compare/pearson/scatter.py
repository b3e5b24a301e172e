"""The scatter strategy: how one backend adds a buffer of sparse tokens into ``sxy``.

``sxy[i, j] += sum_t a[t, i] b[t, j]`` over a buffer of tokens is the only hot loop of the
kernel, and the only code that differs between backends.  Each backend is one object with the
methods of :class:`ScatterBackend`; :class:`~universality.compare.pearson.PearsonAccumulator`
picks one and owns everything else (``sxy``, the per-side moments, the result):

* :class:`~universality.compare.pearson.native.NativeScatter`: C (``csrc/pearson.c``), float32
  features, moments folded into its passes, the scatter left running between buffers;
* :class:`~universality.compare.pearson.numba_kernels.NumbaScatter`: numba, any float width,
  moments folded in;
* :class:`~universality.compare.pearson.cuda.CudaScatter`: a CuPy ``RawKernel`` with float64
  ``atomicAdd``;
* :class:`ScipyScatter` (here): per-buffer SpGEMM, the dependency-free fallback.

Dense mode (``[T, F]`` arrays) needs no strategy: its chunk contribution is one matmul of the
centred chunks, written once against the array module (see the accumulator).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp


class ScatterBackend(Protocol):
    """One backend's sparse products.  Buffers are canonical CSR triples on the backend's
    device, ``a = (indptr [T+1] int64, indices [nnz_a] int32, values [nnz_a] float32/64)``
    for ``T`` tokens of A's ``n_a`` features, ``b`` likewise for B; ``sxy`` is the
    ``[n_a, n_b]`` float64 accumulator (C order); ``side_a`` / ``side_b`` are the per-feature
    moment arrays of :func:`~universality.compare.pearson.moments.new_side`."""

    #: True: :meth:`add` also sums both sides' moments of its buffer, and a buffer it rejects
    #: (ValueError) changes no sum; False: the accumulator sums the moments chunk by chunk.
    folds_moments: bool = False
    #: True: float32 chunks skip the Python canonical-format and finiteness checks, because
    #: :meth:`add` runs them itself.
    checks_float32: bool = False

    def add(self, sxy, a, b, side_a: dict, side_b: dict) -> None:
        """``sxy[i, j] += sum_t a[t, i] * b[t, j]`` over the buffer's tokens (float64 sums of
        exact float64 products).  May return while the work still runs: see :meth:`wait`."""
        ...

    def wait(self) -> None:
        """Block until the work :meth:`add` left running has finished (re-raising its error)."""

    def zero(self, sxy) -> None:
        """``sxy[:] = 0`` (after :meth:`wait`)."""
        sxy.fill(0)


class ScipyScatter(ScatterBackend):
    """CPU without numba (or ``cpu_kernel="scipy"``): ``A^T B`` of each buffer as one float64
    SpGEMM, added into ``sxy``.  Slow (it builds the product matrix), but needs only SciPy."""

    def __init__(self, n_a: int, n_b: int):
        self.n_a, self.n_b = n_a, n_b

    def add(self, sxy, a, b, side_a: dict, side_b: dict) -> None:
        if a[1].size == 0 or b[1].size == 0:
            return
        n_t = len(a[0]) - 1
        am = sp.csr_matrix((a[2].astype(np.float64), a[1], a[0]), shape=(n_t, self.n_a))
        bm = sp.csr_matrix((b[2].astype(np.float64), b[1], b[0]), shape=(n_t, self.n_b))
        c = (am.T.tocsr() @ bm).tocoo()
        sxy[c.row, c.col] += c.data  # SpGEMM output has no duplicate (i, j)
