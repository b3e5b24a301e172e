"""Checkpoints of an SAE run: the run record that identifies it, and atomic save / load.

Every ``checkpoint_every`` steps the weights, Adam moments and step counts and the input shift
(``state.safetensors``) and the step / sample position / scale / run record (``state.json``) go
to ``<out_dir>.ckpt/step_NNNNNNNNN/`` (written atomically; older ones are removed). A checkpoint
is resumed only if its run record equals the current one. Checkpoints hold CPU tensors and do
not record the device, so a run may resume on another device. No pickle anywhere.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from universality.core import store
from universality.sae.config import SAETrainConfig
from universality.sae.model import SAE
from universality.sae.optim import Adam

__all__ = ["RunRecord", "PARAM_NAMES", "LOG_NAME", "save_checkpoint", "load_checkpoint", "log_rows_upto",
           "upstream_of"]

PARAM_NAMES = ["W_enc", "b_enc", "W_dec", "b_dec"]
LOG_NAME = "train_log.jsonl"
_STATE_TENSORS = "state.safetensors"
_STATE_JSON = "state.json"
_FORMAT = 1


@dataclass
class RunRecord:
    """Everything that determines a run's weights (its checkpoint identity), resolved to steps and
    row ranges; written as ``config`` into state.json, metrics.json and cfg.json (``training``)."""

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
    betas: list
    eps: float
    dec_init_norm: float | None
    normalize: str
    grad_clip: float | None
    l1_penalty: str = "decoder_norm"
    init_seed: int | None = None   # weight initialisation; None in the call = ``seed``
    data_seed: int | None = None   # data order (shuffle buffer); None in the call = ``seed``
    #: what the run reads: the activation store's content identity (its integrity record), its
    #: model and token sets; a checkpoint of other inputs is never resumed
    upstream: dict | None = None
    format: int = _FORMAT

    @classmethod
    def resolve(cls, cfg: SAETrainConfig, seed: int, array, train_rows, eval_rows,
                init_seed: int | None = None, data_seed: int | None = None,
                upstream: dict | None = None) -> RunRecord:
        """The record of training ``cfg`` with ``seed`` on ``array`` (``[n_rows, d_in]``) read from
        the inputs ``upstream`` (:func:`upstream_of`). ``init_seed`` / ``data_seed`` (default
        ``seed``) set the initialisation and the data order separately (the SAE-invariance sweep)."""
        n_rows, d_in = (int(v) for v in array.shape)
        n_steps = max(1, int(cfg.train_tokens) // int(cfg.batch_size))
        return cls(
            d_in=d_in, d_sae=int(cfg.expansion) * d_in, n_rows=n_rows, array_dtype=str(array.dtype),
            train_rows=list(train_rows), eval_rows=list(eval_rows), expansion=int(cfg.expansion),
            l1=float(cfg.l1), lr=float(cfg.lr), batch_size=int(cfg.batch_size), n_steps=n_steps,
            seed=int(seed), buffer_tokens=int(cfg.buffer_tokens),
            l1_warmup_steps=int(round(cfg.l1_warmup * n_steps)),
            lr_decay_steps=int(round(cfg.lr_decay * n_steps)), betas=[float(b) for b in cfg.betas],
            eps=float(cfg.eps), dec_init_norm=None if cfg.dec_init_norm is None else float(cfg.dec_init_norm),
            normalize=str(cfg.normalize), grad_clip=None if cfg.grad_clip is None else float(cfg.grad_clip),
            l1_penalty=str(cfg.l1_penalty),
            init_seed=int(seed if init_seed is None else init_seed),
            data_seed=int(seed if data_seed is None else data_seed),
            upstream=upstream)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dict(sorted(self.__dict__.items()))))


def upstream_of(activations_path, array) -> dict:
    """The upstream identity of a run on the store ``activations_path`` (opened as ``array``)."""
    attrs = dict(array.attrs)
    return {"activations": store.content_id(activations_path), "model": attrs.get("model"),
            "token_sets": attrs.get("token_sets")}


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    found = [p for p in ckpt_dir.glob("step_*")
             if p.is_dir() and ".tmp-" not in p.name  # leftovers of a kill mid-write
             and (p / _STATE_JSON).exists() and (p / _STATE_TENSORS).exists()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(ckpt_dir: Path, sae: SAE, opt: Adam, step: int, shift: np.ndarray | None,
                    scale: float, run: RunRecord, elapsed: float) -> None:
    """Weights + Adam moments (+ input shift) as safetensors, the rest as JSON; atomic per step."""
    # CPU tensors (a no-op on the CPU): the file does not depend on the device that wrote it
    tensors = {n: getattr(sae, n).detach().cpu().contiguous() for n in PARAM_NAMES}
    tensors.update({k: v.cpu().contiguous() for k, v in opt.state_tensors(PARAM_NAMES).items()})
    if shift is not None:
        tensors["input.shift"] = torch.from_numpy(np.ascontiguousarray(shift, np.float32))
    with store.atomic_output(ckpt_dir / f"step_{step:09d}") as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / _STATE_TENSORS))
        (tmp / _STATE_JSON).write_text(json.dumps({
            "tensors_sha256": store.file_sha256(tmp / _STATE_TENSORS, 64),
            "step": step, "samples": step * run.batch_size, "adam_t": opt.t,
            "input_scale": scale, "input_shift": shift is not None,
            "config": run.as_dict(), "elapsed_s": elapsed}, indent=2, sort_keys=True))
    for old in _checkpoints(ckpt_dir)[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def _say(msg: str) -> None:
    print(f"checkpoint: {msg}", file=sys.stderr, flush=True)  # the rule's log


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def load_checkpoint(ckpt_dir: Path, run: RunRecord) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Newest intact checkpoint made with the same run record (config and upstream identity), else
    None; why a checkpoint is not resumed goes to stderr (the rule's log)."""
    for path in reversed(_checkpoints(ckpt_dir)):
        try:
            state = json.loads((path / _STATE_JSON).read_text())
            want = state.get("tensors_sha256")
            if want is not None and store.file_sha256(path / _STATE_TENSORS, 64) != want:
                raise store.StoreError("state.safetensors does not match its recorded sha256")
            tensors = load_file(str(path / _STATE_TENSORS), device="cpu")  # moved by the caller
        except Exception as e:  # torn or corrupted: never trust a file
            _say(f"{path} is unreadable ({type(e).__name__}: {e}); trying an older one")
            continue
        if state.get("config") == run.as_dict():
            _say(f"resuming from {path} (step {state.get('step')})")
            return state, tensors
        diff = _differences(state.get("config") or {}, run.as_dict())
        _say(f"{path} was made with other inputs or settings ({', '.join(diff)} differ): starting over")
        return None
    return None


def log_rows_upto(path: Path, step: int) -> list[str]:
    """Lines of the training log with ``step <= step`` (a line torn by a kill is dropped)."""
    keep = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    return keep
