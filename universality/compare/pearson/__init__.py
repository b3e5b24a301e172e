"""Streaming Pearson correlation between two feature sets: the MPPC kernel.

For one layer pair (features of model A at layer ``la``, features of model B at layer ``lb``)
we stream the evaluation tokens in chunks and accumulate, per feature, ``sx = sum x`` and
``sxx = sum x^2``, and per feature pair ``sxy = sum x y``.  At the end

    r_ij = (N sxy_ij - sx_i sy_j) / sqrt((N sxx_i - sx_i^2) (N syy_j - sy_j^2))

and one pass over ``r`` gives the row maxima (A -> B: best B feature for every A feature)
and the column maxima (B -> A) with their argmax.  The full ``F_A x F_B`` Pearson matrix is
never materialised; only the ``sxy`` accumulator is (it is unavoidable).

The kernel is a small accumulator plus one strategy object per backend:

* :mod:`.accumulator`: :class:`PearsonAccumulator` (the public API; sparse and dense input
  modes, precision), which holds ``sxy``, the per-side moments and the result;
* :mod:`.moments`: per-feature moments, exclusion of dead / constant features, ties, the
  maxima of ``r`` (the finaliser);
* :mod:`.scatter`: the strategy interface (``add`` a buffer's products into ``sxy``,
  ``wait``, ``zero``) and the SciPy fallback; :mod:`.native` (C, ``csrc/pearson.c``, with its
  ctypes binding and thread pool), :mod:`.numba_kernels` (numba), :mod:`.cuda` (CuPy): the
  other strategies, each beside its kernels;
* :mod:`.backend`: ``cpu`` / ``cuda`` / ``auto`` and the array module;
* :mod:`.chunks`: chunk formats, conversion, slicing, and the streaming helpers that pair two
  token streams (also shifted: the permutation null);
* :mod:`.io`: :func:`pearson_pair` (two streams in, a result out), :func:`save_result`,
  :func:`load_result`.

The CPU kernels sum every cell in token order, so ``sxy`` is bitwise identical whatever the
chunking, buffer size, thread count or CPU kernel (C or numba); CUDA's ``atomicAdd`` order
varies between runs.  Tunables (prefetch distances, the C scatter variant) are module
attributes of :mod:`.numba_kernels` and :mod:`.native`, read at call time: set them there,
not on this package.

Adding a similarity measure
---------------------------
A measure that is a function of the pair sums and the per-feature moments (covariance, cosine
``sxy / sqrt(sumsq_a sumsq_b)`` from the unshifted moments, a regression slope, ...) needs no
new kernel: every strategy already produces ``sxy`` and the moments.  Write its finaliser
beside :func:`.moments.maxima_xp` (blocks of rows of ``sxy`` -> the measure -> row / column
maxima; mind that dense-mode sums are of ``x - shift``, and that excluded features must stay
out), and call it from a method of :class:`PearsonAccumulator` next to ``result``.  A measure
that needs another per-pair sum (e.g. co-firing counts ``sum [x > 0][y > 0]``) means a second
``[n_a, n_b]`` array and an ``add`` change in every strategy: that is the expensive kind.
"""
from universality.compare.pearson.accumulator import PearsonAccumulator, default_buffer_tokens
from universality.compare.pearson.backend import cuda_available, get_xp, resolve_backend
from universality.compare.pearson.chunks import aligned_chunks, roll_stream, rolled_chunks
from universality.compare.pearson.io import load_result, pearson_pair, save_result
from universality.compare.pearson.moments import maxima_xp as _maxima_xp  # noqa: F401 (tests)
from universality.compare.pearson.native import native_kernels
from universality.compare.pearson.numba_kernels import HAVE_NUMBA, default_threads

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
