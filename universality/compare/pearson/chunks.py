"""Chunks of tokens: recognising, converting, slicing and re-aligning them.

A chunk is ``T`` consecutive tokens of one side, ``[T, F]``: a dense array (NumPy, CuPy, torch),
a scipy/cupyx sparse matrix, or a CSR triple ``(indptr, indices, values)`` of ``T`` rows.
Streams of chunks may also yield ``(start, block)`` items (``store.iter_rows``).

:func:`canonical_triple` and :func:`dense_array` turn any chunk into what the accumulator's
sparse and dense paths sum; :func:`aligned_chunks`, :func:`rolled_chunks` and
:func:`roll_stream` pair two streams token by token (the last two: the permutation null).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from universality.compare.pearson.backend import to_host


# --------------------------------------------------------------------------------------
# recognising and converting chunks
# --------------------------------------------------------------------------------------
def is_triple(c) -> bool:
    return isinstance(c, (tuple, list)) and len(c) == 3


def is_sparse(c) -> bool:
    if is_triple(c) or sp.issparse(c):
        return True
    mod = type(c).__module__
    return mod.startswith("cupyx.scipy.sparse")


def strip_start(c):
    """Accept ``(start, block)`` items as yielded by ``store.iter_rows``."""
    if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], (int, np.integer)):
        return c[1]
    return c


def as_array(c):
    """torch tensors and array-likes to a NumPy / CuPy array (no copy when possible)."""
    if hasattr(c, "detach") and hasattr(c, "cpu"):  # torch.Tensor
        c = c.detach().cpu()
        if str(c.dtype) == "torch.bfloat16":
            c = c.float()
        return c.numpy()
    if isinstance(c, np.ndarray) or type(c).__module__.startswith("cupy"):
        return c
    return np.asarray(c)


def count_rows(c) -> int:
    """Tokens in chunk ``c``."""
    return len(c[0]) - 1 if is_triple(c) else int(c.shape[0])


def slice_rows(c, r0: int, r1: int):
    """Tokens ``r0:r1`` of chunk ``c`` (a triple stays a triple, with a rebased indptr)."""
    if is_triple(c):
        indptr, indices, values = c
        s, e = int(indptr[r0]), int(indptr[r1])
        return (indptr[r0 : r1 + 1] - indptr[r0], indices[s:e], values[s:e])
    if sp.issparse(c) and c.format != "csr":
        c = c.tocsr()
    return c[r0:r1]


def to_triple(c):
    if is_triple(c):
        return c
    c = c.tocsr()
    return (c.indptr, c.indices, c.data)


def concat_rows(chunks: Sequence[Any]):
    """Concatenate chunks along tokens; dense stays dense, anything sparse becomes a triple."""
    if len(chunks) == 1:
        return chunks[0]
    if not any(is_sparse(c) for c in chunks):
        xp = np if isinstance(chunks[0], np.ndarray) else __import__("cupy")
        return xp.concatenate(chunks, axis=0)
    trips = [to_triple(c) if is_sparse(c) else to_triple(sp.csr_matrix(c)) for c in chunks]
    xp = np if isinstance(trips[0][0], np.ndarray) else __import__("cupy")
    offs = np.cumsum([0] + [int(t[0][-1]) for t in trips])
    indptr = xp.concatenate(
        [xp.asarray(t[0][: (None if k == len(trips) - 1 else -1)], dtype=xp.int64) + int(offs[k])
         for k, t in enumerate(trips)]
    )
    return (indptr, xp.concatenate([t[1] for t in trips]), xp.concatenate([t[2] for t in trips]))


# --------------------------------------------------------------------------------------
# what the accumulator sums
# --------------------------------------------------------------------------------------
def _csr_on(xp, c, n_feat: int, name: str):
    """Any sparse chunk or dense [T, n_feat] array -> a CSR matrix on ``xp``'s device."""
    cpu = xp is np
    if not is_sparse(c):
        c = as_array(c)
        if c.ndim != 2 or c.shape[1] != n_feat:
            raise ValueError(f"{name} chunk has shape {c.shape}, expected [tokens, {n_feat}]")
        return sp.csr_matrix(to_host(c)) if cpu else __import__(
            "cupyx.scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(xp.asarray(c))
    if is_triple(c):
        indptr, indices, values = c
        rows = len(indptr) - 1
        if cpu:
            return sp.csr_matrix((to_host(values), to_host(indices), to_host(indptr)),
                                 shape=(rows, n_feat))
        import cupyx.scipy.sparse as csp

        return csp.csr_matrix((xp.asarray(values), xp.asarray(indices), xp.asarray(indptr)),
                              shape=(rows, n_feat))
    if c.shape[1] != n_feat:
        raise ValueError(f"{name} chunk has {c.shape[1]} features, expected {n_feat}")
    c = c.tocsr()
    if not cpu and sp.issparse(c):
        import cupyx.scipy.sparse as csp

        c = csp.csr_matrix(c)
    elif cpu and not sp.issparse(c):
        c = c.get()
    return c


def canonical_triple(xp, c, n_feat: int, name: str, defer_float32_checks: bool = False):
    """Chunk -> canonical CSR triple on ``xp``'s device: (int64 indptr [T+1], int32 indices
    [nnz], float32/float64 values [nnz]), duplicates summed, NaN/inf rejected.

    ``defer_float32_checks``: float32 values skip both checks (the C kernel runs them itself,
    in passes it makes anyway)."""
    c = _csr_on(xp, c, n_feat, name)
    # duplicates would corrupt sum x^2 and min/max.  The C kernel checks its float32
    # buffers itself (scipy's canonical test and NumPy's isfinite here cost 5% of the
    # stream at F = 4096)
    deferred = defer_float32_checks and c.data.dtype == np.float32
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


def dense_array(xp, c, n_feat: int, name: str):
    """Chunk -> dense ``[T, n_feat]`` array on ``xp``'s device (its dtype kept), NaN/inf
    rejected."""
    if is_sparse(c):
        if is_triple(c):
            indptr, indices, values = (to_host(v) for v in c)
            c = sp.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, n_feat))
        c = c.toarray()
    c = xp.asarray(as_array(c))
    if c.ndim != 2 or c.shape[1] != n_feat:
        raise ValueError(f"{name} chunk has shape {tuple(c.shape)}, expected [tokens, {n_feat}]")
    if not bool(xp.isfinite(c).all()):
        raise ValueError(f"{name} chunk contains NaN or inf")
    return c


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
            a = None if a is None else strip_start(a)
        if b is None:
            b = next(ib, None)
            b = None if b is None else strip_start(b)
        if a is None or b is None:
            rest_a = (0 if a is None else count_rows(a)) + sum(count_rows(strip_start(c)) for c in ia)
            rest_b = (0 if b is None else count_rows(b)) + sum(count_rows(strip_start(c)) for c in ib)
            if rest_a or rest_b:
                raise ValueError(f"token streams differ in length: {rest_a} A rows vs {rest_b} "
                                 "B rows left over")
            return
        na, nb = count_rows(a), count_rows(b)
        if na == 0:
            a = None
            continue
        if nb == 0:
            b = None
            continue
        k = min(na, nb)
        yield (a if k == na else slice_rows(a, 0, k)), (b if k == nb else slice_rows(b, 0, k))
        a = None if k == na else slice_rows(a, k, na)
        b = None if k == nb else slice_rows(b, k, nb)


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
            yield concat_rows([get(s, n_rows), get(0, s + length - n_rows)])


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
        c = strip_start(c)
        m = count_rows(c)
        lo, hi = pos, pos + m
        pos = hi
        if hi <= offset:
            head.append(c)
        elif lo >= offset:
            yield c
        else:
            head.append(slice_rows(c, 0, offset - lo))
            yield slice_rows(c, offset - lo, m)
    if pos != n_rows:
        raise ValueError(f"roll_stream: stream had {pos} rows, expected n_rows={n_rows}")
    yield from head

