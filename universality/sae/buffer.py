"""Training rows of an activation array ``[tokens, D]``: split, shuffled stream, normalisation.

Data split (:func:`split_rows`)
    If the activation store has ``attrs["segments"] = {"sae": [a, b], "eval": [c, d]}`` (the
    activations stage writes the SAE training tokens first and the shared evaluation tokens as
    the tail), training reads only ``[a, b)`` and the metrics use ``[c, d)``. Otherwise the
    last ``eval_rows`` rows (or ``round(eval_fraction * tokens)``) are held out and training
    reads the rows before them. Either way the evaluation rows are a held-out tail of the
    array that the trainer never reads; explicit ``(start, stop)`` ranges override both.

Data order (paper A.1: "maintain a buffer and shuffle it every time the buffer is refilled")
    :class:`ShuffleBuffer`: every epoch permutes the training blocks (array-chunk sized runs of
    rows), fills a buffer of ``buffer_tokens`` rows from the next blocks of that permutation,
    shuffles the buffer and emits it, then refills and reshuffles. Batches are consecutive
    slices of this stream (a batch may straddle two buffer fills or two epochs). Every row
    appears exactly once per epoch, the whole array is never in memory, and the stream is a
    pure function of ``(seed, position)``: a checkpoint only has to record the sample count.

Input normalisation (:func:`estimate_normalization`, ``normalize``)
    ``center_scale`` (default): ``x -> s * (x - mu)`` with ``mu`` the mean and
    ``s = sqrt(D / E||x - mu||^2)``; ``scale``: ``x -> s * x`` with ``E||s x||^2 = D`` (SAELens'
    ``expected_average_only_in``); ``none``. Estimated in float64 on up to 65,536 training rows
    from evenly spaced chunks (seed-independent, so SAE-seed variants share it), stored in every
    checkpoint and folded into the saved weights (``SAE.fold_input_normalization``), so the
    saved SAE reads raw activations and SAELens needs no normalisation setting. Centring is a
    re-parametrisation of the biases (it starts b_dec at the mean, which Adam at 8e-4 would take
    ~1,000 steps to learn from zero), not a change of the model family.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from universality.sae.config import NORMALIZATIONS, SAETrainConfig

__all__ = ["holdout_split", "split_rows", "ShuffleBuffer", "estimate_normalization", "NORMALIZATIONS"]

_EVAL_FRACTION = SAETrainConfig.eval_fraction


def holdout_split(n_rows: int, eval_fraction: float = _EVAL_FRACTION, eval_rows: int | None = None) -> tuple[int, slice]:
    """``(n_train, eval_slice)``: rows ``[0, n_train)`` train, the tail ``eval_slice`` evaluates."""
    if eval_rows is None:
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        eval_rows = int(round(n_rows * eval_fraction))
    eval_rows = int(eval_rows)
    if eval_rows < 0 or eval_rows >= n_rows:
        raise ValueError(f"cannot hold out {eval_rows} of {n_rows} rows and still train")
    n_train = n_rows - eval_rows
    return n_train, slice(n_train, n_rows)


def split_rows(n_rows: int, attrs: dict | None = None, eval_fraction: float = _EVAL_FRACTION,
               eval_rows: int | tuple[int, int] | None = None,
               train_rows: tuple[int, int] | None = None) -> tuple[tuple[int, int], tuple[int, int], str]:
    """Training and evaluation row ranges ``(start, stop)`` and where they came from.

    Precedence: explicit ``train_rows`` / ``eval_rows`` ranges; an int ``eval_rows`` (that many
    tail rows); the activation store's ``attrs["segments"]`` (``"sae"`` trains, ``"eval"``
    evaluates: the shared evaluation tokens, the tail of the store); else the last
    ``eval_fraction`` of the rows. The two ranges must not overlap.
    """
    segments = (attrs or {}).get("segments") or {}
    if isinstance(eval_rows, (tuple, list)):
        ev, source = (int(eval_rows[0]), int(eval_rows[1])), "explicit"
        tr = tuple(int(v) for v in train_rows) if train_rows is not None else (0, ev[0])
    elif eval_rows is not None or train_rows is not None or not ("sae" in segments and "eval" in segments):
        if train_rows is not None and eval_rows is None and eval_fraction == 0:
            raise ValueError("train_rows given without eval rows")
        n_train, sl = holdout_split(n_rows, eval_fraction, eval_rows)
        ev, source = (sl.start, sl.stop), "tail"
        tr = tuple(int(v) for v in train_rows) if train_rows is not None else (0, n_train)
    else:
        tr = (int(segments["sae"][0]), int(segments["sae"][1]))
        ev = (int(segments["eval"][0]), int(segments["eval"][1]))
        source = "segments"
    for name, (a, b) in (("train", tr), ("eval", ev)):
        if not 0 <= a < b <= n_rows:
            raise ValueError(f"{name} rows [{a}, {b}) are empty or outside the array of {n_rows} rows")
    if tr[0] < ev[1] and ev[0] < tr[1]:
        raise ValueError(f"train rows {tr} overlap evaluation rows {ev}")
    return tr, ev, source


def _range(rows) -> tuple[int, int]:
    if isinstance(rows, (int, np.integer)):
        return 0, int(rows)
    a, b = rows
    return int(a), int(b)


class ShuffleBuffer:
    """Deterministic shuffled stream of the rows ``rows`` (``(start, stop)``, or an int ``n`` for
    ``[0, n)``) of a 2-D array (Zarr or NumPy).

    See the module docstring. ``batches(batch_size, start)`` yields float32 ``[batch_size, D]``
    arrays of ``scale * (x - shift)``, from stream position ``start`` (samples already consumed).
    """

    def __init__(self, array, rows, buffer_rows: int, seed: int,
                 block_rows: int | None = None, scale: float = 1.0,
                 shift: np.ndarray | None = None):
        self.row0, self.row1 = _range(rows)
        if not 0 <= self.row0 < self.row1 <= array.shape[0]:
            raise ValueError(f"rows [{self.row0}, {self.row1}) outside array of {array.shape[0]} rows")
        self.array, self.seed, self.scale = array, int(seed), float(scale)
        self.n_rows = self.row1 - self.row0
        self.shift = None if shift is None else np.asarray(shift, np.float32).reshape(1, -1)
        self.buffer_rows = max(1, int(buffer_rows))
        chunk = int(getattr(array, "chunks", (4096,))[0])
        if block_rows is None:
            # array-chunk reads, but at least ~8 independent runs of rows in every buffer fill
            block_rows = min(chunk, max(1, self.buffer_rows // 8))
        self.block_rows = int(block_rows)
        # block boundaries on multiples of block_rows (chunk-aligned reads), clipped to the range
        first = (self.row0 // self.block_rows) * self.block_rows
        edges = np.arange(first, self.row1, self.block_rows, dtype=np.int64)
        self.block_start = np.maximum(edges, self.row0)
        self.block_stop = np.minimum(edges + self.block_rows, self.row1)
        self.blocks_per_load = max(1, self.buffer_rows // self.block_rows)
        self._plan_cache: tuple[int, list[np.ndarray], np.ndarray] | None = None

    def _rng(self, *tags: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *tags]))

    def plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Block indices of every buffer fill of ``epoch`` and their start offsets in the epoch."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1], self._plan_cache[2]
        order = self._rng(0, epoch).permutation(len(self.block_start))
        loads = [order[i:i + self.blocks_per_load] for i in range(0, len(order), self.blocks_per_load)]
        sizes = np.array([int((self.block_stop[ld] - self.block_start[ld]).sum()) for ld in loads],
                         dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._plan_cache = (epoch, loads, starts)
        return loads, starts

    def load(self, epoch: int, index: int) -> np.ndarray:
        """One shuffled buffer fill: float32 ``scale * (x - shift)``, rows permuted."""
        loads, _ = self.plan(epoch)
        parts = [np.asarray(self.array[int(self.block_start[b]):int(self.block_stop[b])])
                 for b in np.sort(loads[index])]
        raw = np.concatenate(parts) if len(parts) > 1 else parts[0]
        perm = torch.from_numpy(self._rng(1, epoch, index).permutation(len(raw)))
        buf = torch.from_numpy(np.ascontiguousarray(raw)).index_select(0, perm).to(torch.float32)
        if self.shift is not None:
            buf.sub_(torch.from_numpy(self.shift))
        if self.scale != 1.0:
            buf.mul_(self.scale)
        return buf.numpy()

    def batches(self, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
        """Endless iterator of ``[batch_size, D]`` float32 batches from stream position ``start``."""
        pos = int(start)
        cur_key, cur = None, None
        while True:
            pieces, need = [], batch_size
            while need:
                epoch, off = divmod(pos, self.n_rows)
                loads, starts = self.plan(epoch)
                li = int(np.searchsorted(starts, off, side="right") - 1)
                if cur_key != (epoch, li):
                    cur = None  # drop the old fill before building the next one
                    cur_key, cur = (epoch, li), self.load(epoch, li)
                lo = off - int(starts[li])
                take = min(need, len(cur) - lo)
                pieces.append(cur[lo:lo + take])
                need -= take
                pos += take
            yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def estimate_normalization(array, rows, mode: str = SAETrainConfig.normalize,
                           max_rows: int = 65536) -> tuple[np.ndarray | None, float]:
    """``(shift, scale)`` so that ``scale * (x - shift)`` has ``E||.||^2 = D`` over ``rows``.

    ``center_scale``: shift = mean of x; ``scale``: shift = None (``E||x||^2 = D``, SAELens'
    ``expected_average_only_in`` up to mean-of-norms vs root-mean-square); ``none``: (None, 1).
    Estimated in float64 on up to ``max_rows`` rows of ``rows`` (``(start, stop)`` or ``n``)
    read as evenly spaced runs of one array chunk (deterministic and seed-independent, so
    SAE-seed variants share it).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    if mode == "none":
        return None, 1.0
    r0, r1 = _range(rows)
    chunk = int(getattr(array, "chunks", (4096,))[0])
    n_blocks = -(-(r1 - r0) // chunk)
    want = max(1, min(n_blocks, -(-max_rows // chunk)))
    picks = np.unique(np.linspace(0, n_blocks - 1, want).round().astype(np.int64))
    d = int(array.shape[1])
    sum_x, sum_sq, count = np.zeros(d, np.float64), 0.0, 0
    for b in picks:
        blk = np.asarray(array[r0 + b * chunk:min(r0 + (b + 1) * chunk, r1)], dtype=np.float64)
        sum_x += blk.sum(axis=0)
        sum_sq += float(np.einsum("ij,ij->", blk, blk))
        count += len(blk)
    mean = sum_x / max(count, 1)
    shift = mean.astype(np.float32) if mode == "center_scale" else None
    mean_sq = sum_sq / max(count, 1)
    if shift is not None:
        mean_sq -= float(mean @ mean)
    if not math.isfinite(mean_sq) or mean_sq <= 0:
        raise ValueError(f"cannot normalise activations: mean squared norm is {mean_sq}")
    return shift, math.sqrt(d / mean_sq)
