"""Train one ReLU SAE on a Zarr activation array ``[tokens, D]``: streaming, deterministic, resumable.

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

Input normalisation (``normalize``)
    ``center_scale`` (default): ``x -> s * (x - mu)`` with ``mu`` the mean and
    ``s = sqrt(D / E||x - mu||^2)``; ``scale``: ``x -> s * x`` with ``E||s x||^2 = D`` (SAELens'
    ``expected_average_only_in``); ``none``. Estimated in float64 on up to 65,536 training rows
    from evenly spaced chunks (seed-independent, so SAE-seed variants share it), stored in every
    checkpoint and folded into the saved weights (``SAE.fold_input_normalization``), so the
    saved SAE reads raw activations and SAELens needs no normalisation setting. Centring is a
    re-parametrisation of the biases (it starts b_dec at the mean, which Adam at 8e-4 would take
    ~1,000 steps to learn from zero), not a change of the model family.

Schedules and recipe
    The paper's objective, init and Adam(0.9, 0.999, 1e-8); lr default 8e-4 (paper), constant,
    with an optional linear decay to 0 over the last ``lr_decay`` fraction of steps.
    ``l1`` warms up linearly from 0 over the first ``l1_warmup`` fraction of steps (default 5%,
    Anthropic's April 2024 recipe). That is our dead-feature policy: no resampling (it would
    make the run depend on the data seen at resample time and adds little at these budgets);
    the dead fraction is measured and reported instead. Gradients are clipped to global norm
    ``grad_clip`` (default 1.0, as SAELens' trainer): with beta2 = 0.999 Adam's second moment
    remembers ~1,000 steps, far longer than a toy run, so without clipping the large gradients
    of the first steps keep the step size small for the whole run (measured: matched-L0 EV
    0.54 vs 0.77 for SAELens without it, equal with it).

Determinism and resume
    Weights are initialised from ``seed``; the data order depends on ``seed`` only. Every
    ``checkpoint_every`` steps the weights, Adam moments and step counts and the input shift
    (``state.safetensors``) and the step / sample position / scale / config (``state.json``)
    go to ``<out_dir>.ckpt/step_NNNNNNNNN/`` (written atomically; older ones are removed);
    a rerun with the same arguments continues from the newest one and ends with weights that are
    bit-identical to an uninterrupted run (same machine, same thread count, same device). A
    checkpoint made with other arguments is discarded. Checkpoints hold CPU tensors and do not
    record the device, so a run may resume on another device (CPU <-> CUDA; the result is then
    not bit-identical to an uninterrupted run). ``<out_dir>``
    itself appears only when complete
    (:func:`universality.core.store.atomic_output`), and the checkpoint directory is then removed.
    No pickle anywhere.

Device
    ``device`` (see :mod:`universality.core.device`) holds the SAE, the Adam state and each batch;
    the data stream, the normalisation estimate and the float64 metric sums of the activations
    stay on the CPU, and weights go back to the CPU before they are written. Written for CUDA,
    not yet run on a GPU. On CUDA the run is deterministic only with
    ``torch.use_deterministic_algorithms(True)``, which is not forced here.

Speed
    The step is one fused forward/backward (:func:`universality.sae.model.loss_and_grads`, five GEMMs
    and a few passes over the ``[batch, F]`` activations) with reused buffers and torch's fused
    Adam kernel; no autograd graph. The NaN/inf checks read two scalars per step (free on CPU).
    On a shared or 2-core machine prefer ``num_threads=1`` and two jobs in parallel: two
    OpenMP threads on busy cores spin and can run several times slower than one.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from universality.core import store
from universality.core.device import as_device
from universality.sae.model import SAE, loss_and_grads

__all__ = [
    "SAETrainingError", "ShuffleBuffer", "holdout_split", "split_rows", "estimate_normalization", "Adam",
    "train_sae", "evaluate", "explained_variance", "ce_loss_recovered",
    "DEFAULT_DENSE_THRESHOLD",
]

#: A feature is "dense" when it fires on more than this fraction of evaluation tokens.
DEFAULT_DENSE_THRESHOLD = 0.1
_STATE_TENSORS = "state.safetensors"
_STATE_JSON = "state.json"
_LOG_NAME = "train_log.jsonl"
_FORMAT = 1


class SAETrainingError(RuntimeError):
    """Training diverged (NaN/inf loss or weights). The message names the label and the step."""


# ----------------------------------------------------------------------------- data
def holdout_split(n_rows: int, eval_fraction: float = 0.1, eval_rows: int | None = None) -> tuple[int, slice]:
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


def split_rows(n_rows: int, attrs: dict | None = None, eval_fraction: float = 0.1,
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


NORMALIZATIONS = ("center_scale", "scale", "none")


def estimate_normalization(array, rows, mode: str = "center_scale",
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


# ------------------------------------------------------------------------ optimiser
class Adam:
    """``torch.optim.Adam`` (fused kernel where available) over plain tensors, with gradients
    handed in by the caller, and a state (moments + step count) that round-trips through
    safetensors without pickle. Same update as ``torch.optim.Adam``: no weight decay."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        self.params = [p if isinstance(p, torch.nn.Parameter) else torch.nn.Parameter(p, requires_grad=False)
                       for p in params]
        kw = dict(lr=float(lr), betas=tuple(float(b) for b in betas), eps=float(eps))
        if fused is None:
            fused = self.params[0].device.type in ("cpu", "cuda")
        try:
            self.opt = torch.optim.Adam(self.params, fused=bool(fused), **kw)
        except (RuntimeError, TypeError):  # no fused kernel for this device/torch
            self.opt = torch.optim.Adam(self.params, foreach=False, **kw)
        self.lr = float(lr)

    @property
    def t(self) -> int:
        st = self.opt.state.get(self.params[0])
        return int(st["step"]) if st else 0

    @torch.no_grad()
    def step(self, grads, lr: float | None = None) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.param_groups[0]["lr"] = self.lr if lr is None else float(lr)
        self.opt.step()
        for p in self.params:
            p.grad = None

    def state_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for n, p in zip(names, self.params):
            st = self.opt.state.get(p)
            if st:
                out[f"adam.m.{n}"] = st["exp_avg"]
                out[f"adam.v.{n}"] = st["exp_avg_sq"]
                out[f"adam.step.{n}"] = torch.as_tensor(st["step"]).reshape(1).float()
        return out

    def load_state_tensors(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        group = self.opt.param_groups[0]
        for n, p in zip(names, self.params):
            if f"adam.m.{n}" not in tensors:
                continue
            step = tensors[f"adam.step.{n}"].reshape(()).to(torch.float32)
            if group.get("fused") or group.get("capturable"):
                step = step.to(p.device)
            self.opt.state[p] = {"step": step.clone(),
                                 "exp_avg": tensors[f"adam.m.{n}"].to(p).clone(),
                                 "exp_avg_sq": tensors[f"adam.v.{n}"].to(p).clone()}


# --------------------------------------------------------------------------- metrics
def explained_variance(x: np.ndarray, x_hat: np.ndarray) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean_tokens(x)||^2`` (one number over all tokens)."""
    x = np.asarray(x, np.float64)
    x_hat = np.asarray(x_hat, np.float64)
    sst = float(((x - x.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((x - x_hat) ** 2).sum()) / sst if sst > 0 else float("nan")


def ce_loss_recovered(clean: float, spliced: float, zero_ablated: float) -> float:
    """Fraction of the cross-entropy loss recovered by splicing the SAE in:
    ``(CE_zero - CE_spliced) / (CE_zero - CE_clean)`` (1 = perfect, 0 = as bad as zero-ablating).
    NaN when the zero-ablation does not change the loss."""
    denom = float(zero_ablated) - float(clean)
    if denom == 0 or not math.isfinite(denom):
        return float("nan")
    return (float(zero_ablated) - float(spliced)) / denom


def _as_range(rows, n: int) -> tuple[int, int]:
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step != 1:
            raise ValueError("evaluation rows must be a contiguous slice")
        return start, stop
    if isinstance(rows, range):
        if rows.step != 1:
            raise ValueError("evaluation rows must be a contiguous range")
        return rows.start, rows.stop
    start, stop = rows
    return int(start), int(stop)


@torch.no_grad()
def evaluate(sae: SAE, array, rows, *, batch_rows: int = 2048,
             dense_threshold: float = DEFAULT_DENSE_THRESHOLD, return_counts: bool = False,
             ) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of ``sae`` on ``array[rows]`` (streamed, float64 sums).

    ``sae`` reads raw activations (a saved SAE has its input normalisation folded in).
    ``rows`` is a slice, a range or ``(start, stop)``. Returns
    ``explained_variance`` (see :func:`explained_variance`), ``mse`` (squared error per
    element), ``mse_per_token`` (summed over D), ``mean_l0`` (features > 0 per token),
    ``dead_fraction`` (features that never fire on these tokens), ``dense_fraction`` (features
    firing on more than ``dense_threshold`` of the tokens), their counts, ``mean_sparsity``
    (``mean sum_i f_i ||W_dec[i]||``) and ``n_tokens``; plus ``feature_counts`` (firing counts
    per feature, an int64 array) when ``return_counts``.
    """
    start, stop = _as_range(rows, array.shape[0])
    n = stop - start
    if n <= 0:
        raise ValueError(f"no evaluation rows in [{start}, {stop})")
    D, F = sae.d_in, sae.d_sae
    dev = sae.W_enc.device  # evaluate where the SAE is; the float64 sums of x stay in NumPy
    dec_norm = sae.decoder_norms().detach().float()
    sse = 0.0
    sum_x = np.zeros(D, np.float64)
    sum_x2 = 0.0
    l0 = 0
    sparsity = 0.0
    counts = torch.zeros(F, dtype=torch.int64, device=dev)
    for s in range(start, stop, batch_rows):
        blk = np.asarray(array[s:min(s + batch_rows, stop)], dtype=np.float32)
        x = torch.from_numpy(blk).to(dev)
        f = torch.addmm(sae.b_enc.detach(), x, sae.W_enc.detach()).relu_()
        x_hat = sae.decode(f)
        sse += float((x_hat - x).double().pow(2).sum())
        xd = blk.astype(np.float64)
        sum_x += xd.sum(axis=0)
        sum_x2 += float(np.einsum("ij,ij->", xd, xd))
        fired = f > 0
        c = fired.sum(dim=0)
        counts += c
        l0 += int(c.sum())
        sparsity += float((f @ dec_norm).double().sum())
    sst = sum_x2 - float(sum_x @ sum_x) / n
    freq = counts.double() / n
    out: dict[str, Any] = {
        "n_tokens": n,
        "explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"),
        "mse": sse / (n * D),
        "mse_per_token": sse / n,
        "mean_l0": l0 / n,
        "n_dead": int((counts == 0).sum()),
        "dead_fraction": float((counts == 0).double().mean()),
        "n_dense": int((freq > dense_threshold).sum()),
        "dense_fraction": float((freq > dense_threshold).double().mean()),
        "dense_threshold": float(dense_threshold),
        "mean_sparsity": sparsity / n,
        "d_in": D,
        "d_sae": F,
    }
    if return_counts:
        out["feature_counts"] = counts.cpu().numpy()
    return out


# --------------------------------------------------------------------------- trainer
@dataclass
class _Config:
    d_in: int
    d_sae: int
    n_rows: int
    array_dtype: str
    train_rows: list
    eval_rows: list
    expansion: int
    l1: float
    lr: float
    batch_size: int
    n_steps: int
    seed: int
    buffer_tokens: int
    l1_warmup_steps: int
    lr_decay_steps: int
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    dec_init_norm: float | None = None
    normalize: str = "center_scale"
    grad_clip: float | None = None
    format: int = _FORMAT

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dict(sorted(self.__dict__.items()))))


_PARAM_NAMES = ["W_enc", "b_enc", "W_dec", "b_dec"]


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    found = [p for p in ckpt_dir.glob("step_*")
             if p.is_dir() and ".tmp-" not in p.name  # leftovers of a kill mid-write
             and (p / _STATE_JSON).exists() and (p / _STATE_TENSORS).exists()]
    return sorted(found, key=lambda p: p.name)


def _save_checkpoint(ckpt_dir: Path, sae: SAE, opt: Adam, step: int, shift: np.ndarray | None,
                     scale: float, cfg: _Config, elapsed: float) -> None:
    """Weights + Adam moments (+ input shift) as safetensors, the rest as JSON; atomic per step."""
    # CPU tensors (a no-op on the CPU): the file does not depend on the device that wrote it
    tensors = {n: getattr(sae, n).detach().cpu().contiguous() for n in _PARAM_NAMES}
    tensors.update({k: v.cpu().contiguous() for k, v in opt.state_tensors(_PARAM_NAMES).items()})
    if shift is not None:
        tensors["input.shift"] = torch.from_numpy(np.ascontiguousarray(shift, np.float32))
    with store.atomic_output(ckpt_dir / f"step_{step:09d}") as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / _STATE_TENSORS))
        (tmp / _STATE_JSON).write_text(json.dumps({
            "step": step, "samples": step * cfg.batch_size, "adam_t": opt.t,
            "input_scale": scale, "input_shift": shift is not None,
            "config": cfg.as_dict(), "elapsed_s": elapsed}, indent=2, sort_keys=True))
    for old in _checkpoints(ckpt_dir)[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt_dir: Path, cfg: _Config) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Newest readable checkpoint made with the same config, else None."""
    for path in reversed(_checkpoints(ckpt_dir)):
        try:
            state = json.loads((path / _STATE_JSON).read_text())
            tensors = load_file(str(path / _STATE_TENSORS), device="cpu")  # moved by the caller
        except Exception:  # torn (cannot happen with atomic writes, but never trust a file)
            continue
        return (state, tensors) if state.get("config") == cfg.as_dict() else None
    return None


def _schedule(step: int, cfg: _Config) -> tuple[float, float]:
    """``(l1, lr)`` of the 0-based optimiser step ``step``."""
    l1 = cfg.l1 * min(1.0, (step + 1) / cfg.l1_warmup_steps) if cfg.l1_warmup_steps > 0 else cfg.l1
    lr = cfg.lr
    if cfg.lr_decay_steps > 0:
        left = cfg.n_steps - step
        if left <= cfg.lr_decay_steps:
            lr = cfg.lr * left / cfg.lr_decay_steps
    return l1, lr


def _log_rows_upto(path: Path, step: int) -> list[str]:
    """Lines of the training log with ``step <= step`` (a line torn by a kill is dropped)."""
    keep = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    return keep


def _diverged(label: str, step: int, what: str) -> SAETrainingError:
    return SAETrainingError(
        f"SAE training for {label!r} diverged: non-finite {what} at step {step}. "
        "Lower the learning rate or l1, or check the activations for NaN/inf.")


def train_sae(
    activations_path: str | Path,
    out_dir: str | Path,
    *,
    expansion: int = 16,
    l1: float = 2.0,
    lr: float = 8e-4,
    batch_size: int = 256,
    n_train_tokens: int = 400_000,
    seed: int = 0,
    buffer_tokens: int = 65_536,
    eval_fraction: float = 0.1,
    eval_rows: int | tuple[int, int] | None = None,
    train_rows: tuple[int, int] | None = None,
    checkpoint_every: int = 100,
    label: str = "sae",
    l1_warmup: float = 0.05,
    lr_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    dec_init_norm: float | None = None,
    normalize: str = "center_scale",
    grad_clip: float | None = 1.0,
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD,
    log_every: int = 10,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one SAE on the Zarr array ``activations_path`` and write ``out_dir``.

    ``out_dir`` receives ``cfg.json`` + ``sae_weights.safetensors`` (SAELens layout, input
    normalisation folded in), ``metrics.json`` (:func:`evaluate` on the held-out tail plus
    ``label``, row ranges, a ``training`` block and the ``config``) and ``train_log.jsonl``
    (every ``log_every`` steps: step, tokens, loss, mse, sparsity, l1, lr, l0 and explained
    variance of the batch, elapsed_s). ``n_train_tokens`` is rounded down to whole batches (at
    least one) and may exceed the training rows (several epochs). ``metadata`` (model, site,
    layer, ...) goes into ``cfg.json["metadata"]``. ``label`` names the run in the progress bar
    and in errors. ``num_threads`` sets ``torch.set_num_threads`` (results are bit-identical
    only for a fixed thread count). ``device`` holds the SAE, the optimiser and each batch (see
    the module docstring). ``on_step(step)`` runs after every completed step (tests use
    it to interrupt). Raises :class:`SAETrainingError` on a NaN/inf loss or weight.
    Returns the metrics dictionary.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.with_name(out_dir.name + ".ckpt")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    arr = store.open_array(activations_path)
    if arr.ndim != 2:
        raise ValueError(f"{activations_path}: expected a [tokens, D] array, got shape {arr.shape}")
    n_rows, d_in = (int(v) for v in arr.shape)
    train_range, eval_range, split_source = split_rows(
        n_rows, dict(arr.attrs), eval_fraction, eval_rows, train_rows)
    n_steps = max(1, int(n_train_tokens) // int(batch_size))
    cfg = _Config(
        d_in=d_in, d_sae=int(expansion) * d_in, n_rows=n_rows, array_dtype=str(arr.dtype),
        train_rows=list(train_range), eval_rows=list(eval_range), expansion=int(expansion), l1=float(l1),
        lr=float(lr), batch_size=int(batch_size), n_steps=n_steps, seed=int(seed),
        buffer_tokens=int(buffer_tokens), l1_warmup_steps=int(round(l1_warmup * n_steps)),
        lr_decay_steps=int(round(lr_decay * n_steps)), betas=[float(b) for b in betas],
        eps=float(eps), dec_init_norm=None if dec_init_norm is None else float(dec_init_norm),
        normalize=str(normalize), grad_clip=None if grad_clip is None else float(grad_clip))

    device = as_device(device)
    # initialised on the CPU (its own CPU generator), so every device starts from the same weights
    sae = SAE.initialized(cfg.d_in, cfg.d_sae, cfg.seed, cfg.dec_init_norm).to(device).requires_grad_(False)
    params = [getattr(sae, n) for n in _PARAM_NAMES]  # Parameters with requires_grad=False
    opt = Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_path = ckpt_dir / _LOG_NAME
    resumed = _load_checkpoint(ckpt_dir, cfg)
    start_step, elapsed_before = 0, 0.0
    if resumed is not None:
        state, tensors = resumed
        with torch.no_grad():
            for n, p in zip(_PARAM_NAMES, params):
                p.copy_(tensors[n])
        opt.load_state_tensors(_PARAM_NAMES, tensors)
        start_step, scale = int(state["step"]), float(state["input_scale"])
        shift = tensors["input.shift"].numpy() if state["input_shift"] else None
        elapsed_before = float(state.get("elapsed_s", 0.0))
        log_path.write_text("".join(ln + "\n" for ln in _log_rows_upto(log_path, start_step)))
    else:
        for old in ckpt_dir.iterdir():  # checkpoints of another config, an old log
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        shift, scale = estimate_normalization(arr, train_range, cfg.normalize)

    stream = ShuffleBuffer(arr, train_range, cfg.buffer_tokens, cfg.seed, scale=scale, shift=shift)
    batches = stream.batches(cfg.batch_size, start=start_step * cfg.batch_size)
    buffers: dict[str, torch.Tensor] = {}
    bar = tqdm(total=n_steps, initial=start_step, desc=f"SAE {label}", unit="step",
               disable=not progress, dynamic_ncols=True, leave=False)
    t0, c0 = time.perf_counter(), time.process_time()
    step, last_loss = start_step, float("nan")
    with open(log_path, "a") as log:
        while step < n_steps:
            x = torch.from_numpy(next(batches)).to(device)
            l1_now, lr_now = _schedule(step, cfg)
            terms, grads, f = loss_and_grads(*params, x, l1_now, buffers)
            loss = float(terms["loss"])
            if not math.isfinite(loss):
                raise _diverged(label, step + 1, f"loss ({loss})")
            if cfg.grad_clip is not None:
                gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                factor = torch.clamp(cfg.grad_clip / (gnorm + 1e-6), max=1.0)
                for g in grads:
                    g.mul_(factor)
            opt.step(grads, lr_now)
            step += 1
            # a sum is finite iff every element is (or it overflowed, which is divergence too)
            if not math.isfinite(float(sum(p.sum() for p in params))):
                bad = [n for n, p in zip(_PARAM_NAMES, params) if not bool(torch.isfinite(p).all())]
                raise _diverged(label, step, "weights (" + (", ".join(bad) or "overflow") + ")")
            last_loss = loss
            if step % log_every == 0 or step == n_steps:
                l0 = float((f > 0).sum()) / x.shape[0]
                mse = float(terms["mse"])
                var = float((x - x.mean(dim=0)).pow(2).sum()) / x.shape[0]
                row = {"step": step, "tokens": step * cfg.batch_size, "loss": loss, "mse": mse,
                       "sparsity": float(terms["sparsity"]), "l1": l1_now, "lr": lr_now, "l0": l0,
                       "explained_variance": 1.0 - mse / var if var > 0 else float("nan"),
                       "elapsed_s": round(elapsed_before + time.perf_counter() - t0, 3)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss:.4g}", l0=f"{l0:.1f}", ev=f"{row['explained_variance']:.3f}")
            bar.update(1)
            if checkpoint_every and step % checkpoint_every == 0 and step < n_steps:
                log.flush()
                _save_checkpoint(ckpt_dir, sae, opt, step, shift, scale, cfg,
                                 elapsed_before + time.perf_counter() - t0)
            if on_step is not None:
                on_step(step)
    bar.close()
    run_s, run_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    # fold the input normalisation, evaluate on the held-out tail, publish atomically
    sae.fold_input_normalization(None if shift is None else torch.from_numpy(shift), scale)
    metrics = evaluate(sae, arr, eval_range, dense_threshold=dense_threshold)
    metrics.update({
        "label": label,
        "train_rows": list(train_range),
        "eval_rows": list(eval_range),
        "split": split_source,
        "ce_loss_recovered": None,  # needs the language model: see ce_loss_recovered()
        "training": {
            "steps": n_steps, "tokens": n_steps * cfg.batch_size, "final_loss": last_loss,
            "resumed_from_step": start_step, "wall_s": round(elapsed_before + run_s, 3),
            "tokens_per_s": round((step - start_step) * cfg.batch_size / max(run_s, 1e-9), 1),
            "loop_cpu_s": round(run_cpu_s, 3),  # process CPU time of this run's loop (all threads)
            "device": str(device),
        },
        "config": cfg.as_dict(),
    })
    record = {
        **(metadata or {}),
        "label": label,
        "input_normalization": {
            "mode": cfg.normalize, "scale": scale, "folded": True,
            "shift": None if shift is None else [float(v) for v in shift],
            "note": "trained on scale * (x - shift); folded into W_enc, b_enc, W_dec, b_dec",
        },
        "training": cfg.as_dict(),
        "loss": "mean_tokens(||x - x_hat||^2 + l1 * sum_i f_i ||W_dec[i]||) on normalised x",
    }
    with store.atomic_output(out_dir) as tmp:
        sae.save(tmp, extra_cfg=record)
        store.write_json(tmp / "metrics.json", metrics)
        shutil.copyfile(log_path, tmp / _LOG_NAME)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return metrics
