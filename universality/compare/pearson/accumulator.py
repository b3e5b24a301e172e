"""The accumulator: streaming sums of one layer pair, and the strategy that adds the products.

Two input modes, one API (:class:`PearsonAccumulator`):

* **sparse** (SAE features, ReLU outputs that are mostly zero): chunks are CSR (``scipy.sparse``
  matrices, or ``(indptr, indices, values)`` triples).  Tokens are buffered and each buffer's
  products go to the backend's :class:`~universality.compare.pearson.scatter.ScatterBackend`
  (C, numba, CUDA or SciPy).  The cost is the number of products ``sum_t nnz_A(t) * nnz_B(t)``,
  not ``N * F_A * F_B``.
* **dense** (neuron baseline: MLP neurons, gate activations; large offsets, F ~ 512-3072):
  chunks are ``[tokens, F]`` arrays.  Every feature is *shifted* by its mean on the first
  chunk before anything is summed (Pearson is shift invariant), so the sums are sums of small
  centred numbers and the final cancellation ``N sxy - sx sy`` loses nothing; each chunk's
  contribution is one matmul ``Xc^T Yc`` (BLAS / cuBLAS).

Precision.  ``sxy`` is float64 (``F_A * F_B * 8`` bytes: 4.8 GB at 24576^2).  A float32
accumulator would halve that but is not good enough: a frequent feature adds ~10^5..10^6
positive terms into one cell, the float32 rounding error of the running sum grows like
``sqrt(n) * 2^-24`` of the sum (~1e-4 relative at 10^6 terms) and the cancellation in
``N sxy - sx sy`` amplifies it further (see ``tests/compare/test_pearson.py``, which shows a
float32 accumulator failing the 1e-5 target on a case where this kernel passes).  Products of
two float32 values are exact in float64, so the sparse path's only rounding is float64
summation.  Per-feature sums are float64 too.
"""
from __future__ import annotations

import numpy as np

from universality.compare.pearson import moments
from universality.compare.pearson import numba_kernels as nk
from universality.compare.pearson.backend import get_xp, resolve_backend, to_host
from universality.compare.pearson.chunks import (canonical_triple, concat_rows, count_rows,
                                                 dense_array, is_sparse, strip_start)
from universality.compare.pearson.cuda import CudaScatter
from universality.compare.pearson.native import NativeScatter, native_kernels
from universality.compare.pearson.scatter import ScatterBackend, ScipyScatter


def default_buffer_tokens(n_b: int) -> int:
    """Tokens per sparse kernel call: more tokens = more reuse of each ``sxy`` row while it
    sits in cache, fewer = B's rows stay in cache.  Measured sweet spot ~4 * F_B, in [16k, 64k]."""
    return int(min(65536, max(16384, 4 * n_b)))


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
        if cpu_kernel in ("native", "numba") and not nk.HAVE_NUMBA:
            raise RuntimeError(f"cpu_kernel={cpu_kernel!r} but numba is not installed (pip install numba)")
        lib = native_kernels() if cpu_kernel in ("auto", "native") and nk.HAVE_NUMBA else None
        if cpu_kernel == "native" and lib is None:
            raise RuntimeError("cpu_kernel='native' but csrc/pearson.c could not be built (see the "
                               "warning above; UNIVERSALITY_NATIVE=0 disables it)")
        self.n_a, self.n_b = int(n_a), int(n_b)
        self.backend = resolve_backend(backend)
        self.xp = get_xp(self.backend)
        self.mode = None if mode == "auto" else mode
        self.dense_dtype = dense_dtype
        self.buffer_tokens = int(buffer_tokens or default_buffer_tokens(self.n_b))
        self.n_threads = int(n_threads or nk.default_threads())
        if cpu_kernel == "auto":
            cpu_kernel = "native" if lib is not None else ("numba" if nk.HAVE_NUMBA else "scipy")
        self.cpu_kernel = cpu_kernel
        self._scatter = self._choose_scatter(lib)
        self._sxy = None
        self.reset()

    def _choose_scatter(self, lib) -> ScatterBackend:
        if self.backend == "cuda":
            return CudaScatter()
        if self.cpu_kernel == "native":
            return NativeScatter(lib, self.n_a, self.n_b, self.n_threads)
        if self.cpu_kernel == "numba":
            return nk.NumbaScatter(self.n_a, self.n_b, self.n_threads)
        return ScipyScatter(self.n_a, self.n_b)

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all tokens (keeps, and zeroes, an already allocated ``sxy``)."""
        self._scatter.wait()
        self.n_tokens = 0
        self._side = {s: moments.new_side(self.xp, n) for s, n in (("a", self.n_a), ("b", self.n_b))}
        if self._sxy is not None:
            self._scatter.zero(self._sxy)
        self._buf: list = []
        self._buf_tokens = 0

    @property
    def sxy(self):
        """The ``[n_a, n_b]`` float64 sum of (shifted) products, on the backend's device."""
        self._flush()
        return self._sxy

    # -- streaming ---------------------------------------------------------------------------
    def update(self, a_chunk, b_chunk) -> None:
        """Add one chunk of tokens.  ``a_chunk`` [T, n_a] and ``b_chunk`` [T, n_b] must cover
        the same T tokens in the same order (CSR matrix, CSR triple, or dense array)."""
        a_chunk, b_chunk = strip_start(a_chunk), strip_start(b_chunk)
        if self.mode is None:
            self.mode = "sparse" if (is_sparse(a_chunk) and is_sparse(b_chunk)) else "dense"
        ta, tb = count_rows(a_chunk), count_rows(b_chunk)
        if ta != tb:
            raise ValueError(f"A chunk has {ta} tokens but B chunk has {tb}: chunks must cover the "
                             "same tokens (pearson_pair/aligned_chunks re-align uneven chunks)")
        if ta == 0:
            return
        if self._sxy is None:
            self._sxy = self.xp.zeros((self.n_a, self.n_b), self.xp.float64)
        if self.mode == "sparse":
            self._update_sparse(a_chunk, b_chunk, ta)
        else:
            self._update_dense(a_chunk, b_chunk, ta)

    def _update_sparse(self, a_chunk, b_chunk, n_tok: int) -> None:
        xp, defer = self.xp, self._scatter.checks_float32
        a = canonical_triple(xp, a_chunk, self.n_a, "A", defer)
        b = canonical_triple(xp, b_chunk, self.n_b, "B", defer)
        if not self._scatter.folds_moments:
            moments.add_sparse(xp, self._side["a"], a, self.n_a)
            moments.add_sparse(xp, self._side["b"], b, self.n_b)
        self._buf.append((a, b))
        self._buf_tokens += n_tok
        self.n_tokens += n_tok
        if self._buf_tokens >= self.buffer_tokens:
            self._flush(wait=False)

    def _update_dense(self, a_chunk, b_chunk, n_tok: int) -> None:
        xp = self.xp
        a = dense_array(xp, a_chunk, self.n_a, "A")
        b = dense_array(xp, b_chunk, self.n_b, "B")  # both checked before any sum changes
        ac = moments.add_dense(xp, self._side["a"], a)
        bc = moments.add_dense(xp, self._side["b"], b)
        if self.dense_dtype == "float32":
            self._sxy += (ac.astype(xp.float32).T @ bc.astype(xp.float32))
        else:
            self._sxy += ac.T @ bc
        self.n_tokens += n_tok

    def _flush(self, wait: bool = True) -> None:
        """Run the sparse kernel over the buffered tokens.  ``wait=False`` (from ``update``)
        lets a strategy's work run on while the caller reads the next chunks."""
        if self._buf:
            a = concat_rows([p[0] for p in self._buf])
            b = concat_rows([p[1] for p in self._buf])
            n_buf = self._buf_tokens
            self._buf, self._buf_tokens = [], 0
            try:
                self._scatter.add(self._sxy, a, b, self._side["a"], self._side["b"])
            except ValueError:  # a rejected buffer is dropped; folded moments were not summed
                if self._scatter.folds_moments:
                    self.n_tokens -= n_buf
                raise
        if wait:
            self._scatter.wait()

    # -- results ---------------------------------------------------------------------------
    def _finish_side(self, side: dict) -> dict:
        """Exact exclusion masks and 1/sqrt(N var) from the running sums (see
        :func:`~universality.compare.pearson.moments.finish_side`)."""
        return moments.finish_side(self.xp, side, self.n_tokens)

    def result(self, top_k: int = 0) -> dict:
        """Row/column maxima of the Pearson matrix and the per-feature moments.

        Keys (NumPy arrays on the host):
          ``row_max`` [n_a] float32 (NaN: excluded A feature or no valid B feature),
          ``row_arg`` [n_a] int32 (-1), ``col_max`` [n_b] float32, ``col_arg`` [n_b] int32,
          ``n_tokens``, ``excluded_a``/``excluded_b`` (counts), ``never_fired_a``/``_b``,
          ``constant_a``/``_b``, ``valid_a``/``valid_b`` (bool masks), and per-feature
          ``mean_a, std_a, sum_a, sumsq_a, nnz_a, min_a, max_a`` (same for ``_b``).
        With ``top_k`` > 0 also the ``top_k`` best candidates per feature
        (:func:`~universality.compare.pearson.moments.topk_xp`): ``row_top_val`` [n_a, k]
        float32 (NaN: no candidate), ``row_top_arg`` [n_a, k] int32 (-1), ``col_top_val`` /
        ``col_top_arg`` [n_b, k]; the maxima above are computed as without it (bitwise).
        """
        self._flush()
        fa, fb = self._finish_side(self._side["a"]), self._finish_side(self._side["b"])
        if self._sxy is None:  # no tokens yet: every feature is excluded, nothing to scan
            rmax, rarg = np.full(self.n_a, -np.inf), np.full(self.n_a, -1)
            cmax, carg = np.full(self.n_b, -np.inf), np.full(self.n_b, -1)
        else:
            rmax, rarg, cmax, carg = moments.maxima(self.xp, self._sxy, float(self.n_tokens), fa, fb,
                                                    self.n_threads)
        rmax, rarg, cmax, carg = (to_host(v) for v in (rmax, rarg, cmax, carg))
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
            out[f"valid_{s}"] = to_host(f["valid"]).astype(bool)
            out[f"excluded_{s}"] = int((~out[f"valid_{s}"]).sum())
            out[f"never_fired_{s}"] = f["never"]
            out[f"constant_{s}"] = f["const"]
            for k, v in f["moments"].items():
                out[f"{k}_{s}"] = to_host(v)
        if top_k > 0:
            out.update(self._top_k(int(top_k), fa, fb))
        return out

    def _top_k(self, k: int, fa: dict, fb: dict) -> dict:
        """The ``row_top_*`` / ``col_top_*`` arrays of :meth:`result` (host, float32 / int32)."""
        if self._sxy is None:
            vals = [np.full((n, k), -np.inf) for n in (self.n_a, self.n_b)]
            tops = (vals[0], np.full((self.n_a, k), -1), vals[1], np.full((self.n_b, k), -1))
        else:
            tops = moments.topk_xp(self.xp, self._sxy, float(self.n_tokens), fa, fb, k)
        rv, ri, cv, ci = (to_host(v) for v in tops)
        return {"row_top_val": np.where(np.isfinite(rv), rv, np.nan).astype(np.float32),
                "row_top_arg": ri.astype(np.int32),
                "col_top_val": np.where(np.isfinite(cv), cv, np.nan).astype(np.float32),
                "col_top_arg": ci.astype(np.int32)}

    def pearson_matrix(self) -> np.ndarray:
        """The full ``[n_a, n_b]`` float64 Pearson matrix (NaN rows/columns for excluded
        features).  For small problems and tests: it materialises ``n_a * n_b`` values."""
        self._flush()
        fa, fb = self._finish_side(self._side["a"]), self._finish_side(self._side["b"])
        sxy = self._sxy if self._sxy is not None else self.xp.zeros((self.n_a, self.n_b))
        return to_host(moments.pearson_matrix(self.xp, sxy, float(self.n_tokens), fa, fb))
