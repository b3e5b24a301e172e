"""Torch-free readers of the feature and activation stores: CSR feature stores (the layout of
:mod:`universality.sae.features`) and the eval rows of a dense activation store.

Kept apart from :mod:`universality.sae.features` (which encodes with torch) so that the jobs that
only read stores (Pearson pairs, MPPC tables, measures, report) start without importing torch:
about 1.5 CPU s per job, measured, over ~80 such jobs of the default run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from universality.core import store


def eval_range(array) -> tuple[int, int]:
    """Row range of the eval segment of an activation store (all rows if it has no segments)."""
    seg = dict(array.attrs).get("segments", {})
    return tuple(seg["eval"]) if "eval" in seg else (0, array.shape[0])



class CSRStore:
    """Row-chunked reads of a CSR feature store."""

    def __init__(self, path: str):
        if not Path(path).exists():
            raise FileNotFoundError(f"feature store not found: {path}")
        self.path = str(path)
        self.group = store.open_group(path)  # verified against its integrity record
        self.attrs = dict(self.group.attrs)
        if "shape" not in self.attrs:
            raise store.StoreError(f"{path}: feature store has no 'shape' attribute")
        self.shape = tuple(self.attrs["shape"])
        self.indptr = store.read_member(self.group, "indptr", path)
        with store.reading(path):
            self._data, self._indices = self.group["data"], self.group["indices"]
        nnz = self._data.shape[0]
        if (len(self.indptr) != self.shape[0] + 1 or self.indptr[0] != 0 or self.indptr[-1] != nnz
                or self._indices.shape[0] != nnz or (np.diff(self.indptr) < 0).any()):
            raise store.StoreError(f"{path}: indptr / indices / data do not form a CSR matrix of shape "
                                   f"{self.shape} (corrupt feature store)")

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        with store.reading(self.path):
            data, indices = np.asarray(self._data[a:b]), np.asarray(self._indices[a:b])
        if len(indices) and (indices.min() < 0 or indices.max() >= self.shape[1]):
            raise store.StoreError(f"{self.path}: feature indices out of [0, {self.shape[1]}) in rows "
                                   f"{start}..{stop} (corrupt feature store)")
        return sp.csr_matrix((data, indices, self.indptr[start : stop + 1] - a),
                             shape=(stop - start, self.shape[1]))

    def __getitem__(self, s: slice) -> sp.csr_matrix:
        return self.rows(s.start or 0, min(s.stop, self.shape[0]))

    def chunks(self, chunk_rows: int) -> Iterator[sp.csr_matrix]:
        for start in range(0, self.shape[0], chunk_rows):
            yield self.rows(start, min(start + chunk_rows, self.shape[0]))


class DenseEval:
    """The eval rows of a dense activation store (the neuron baseline), as row slices."""

    def __init__(self, path: str):
        self.array = store.open_array(path)
        self.lo, self.hi = eval_range(self.array)
        self.shape = (self.hi - self.lo, self.array.shape[1])
        self.attrs = dict(self.array.attrs)

    def __getitem__(self, s: slice) -> np.ndarray:
        stop = min(s.stop, self.shape[0])
        return np.asarray(self.array[self.lo + (s.start or 0) : self.lo + stop], dtype=np.float32)

    def chunks(self, chunk_rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.shape[0], chunk_rows):
            yield self[start : start + chunk_rows]
