"""Driving a layer pair end to end, and the on-disk form of its result
(``pearson/{comparison}/A{la}_B{lb}.npz``)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from universality.compare.pearson.accumulator import PearsonAccumulator
from universality.compare.pearson.chunks import aligned_chunks, is_triple


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
        if is_triple(c):
            raise ValueError(f"{name} chunks are CSR triples: pass n_{name.lower()} explicitly")
        return int(c.shape[1])

    acc = PearsonAccumulator(width(first[0], n_a, "A"), width(first[1], n_b, "B"), **kwargs)
    acc.update(*first)
    for a, b in pairs:
        acc.update(a, b)
    return acc.result()


def save_result(path, result: dict, **extra) -> None:
    """Write a :meth:`PearsonAccumulator.result` dict (plus ``extra`` scalars) as ``.npz``,
    atomically."""
    from universality.core.store import atomic_output

    arrays = {k: np.asarray(v) for k, v in {**result, **extra}.items()}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_result(path) -> dict:
    """Read a file written by :func:`save_result` (0-d arrays back to Python scalars); a corrupt
    or foreign file raises StoreError naming ``path``."""
    from universality.core.store import reading

    with reading(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
