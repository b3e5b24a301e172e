"""The SAE training recipe: one dataclass, the single source of its defaults.

:class:`SAETrainConfig` is to :func:`universality.sae.train.train_sae` what SAELens'
``LanguageModelSAERunnerConfig`` is to its runner. Fields marked ``schema`` are the keys of the
config's ``saes`` section, with the same defaults (``tests/sae/test_sae_config.py`` checks both
ways), so the pipeline trains with exactly these values; the others are trainer settings the
pipeline leaves at their defaults. Fields marked ``override`` may be changed per (model, layer)
in ``saes.overrides``.

Units: ``*_tokens`` count activation rows; ``lr`` is Adam's step size; ``lr_decay`` and
``l1_warmup`` are fractions of the run's optimiser steps; ``checkpoint_every`` and
``log_every`` count steps (0 = never checkpoint); ``dense_threshold`` and ``eval_fraction`` are
fractions of tokens; ``ce_windows`` counts evaluation windows of the language model.
Run-specific inputs (paths, seed, row ranges, device, threads) are arguments of ``train_sae``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SAETrainConfig", "NORMALIZATIONS"]

#: Input normalisations (see :mod:`universality.sae.train`).
NORMALIZATIONS = ("center_scale", "scale", "none")


def _key(default: Any, *, schema: bool = True, override: bool = False):
    return field(default=default, metadata={"schema": schema, "override": override})


@dataclass(frozen=True)
class SAETrainConfig:
    """The recipe of one SAE run (paper Appendix A); see the module docstring for units."""

    expansion: int = _key(8, override=True)          # F = expansion x D (paper 32)
    l1: float = _key(2.0, override=True)              # sparsity coefficient after the warm-up
    lr: float = _key(8.0e-4, override=True)
    lr_decay: float = _key(0.2, override=True)        # linear decay to 0 over this last fraction
    batch_size: int = _key(256, override=True)
    buffer_tokens: int = _key(65536)                  # rows per shuffle-buffer fill
    train_tokens: int = _key(400_000, override=True)  # rounded down to whole batches (>= 1)
    checkpoint_every: int = _key(200)
    ce_windows: int = _key(32)                        # used by the SAE stage, not the trainer
    l1_warmup: float = _key(0.05, schema=False)
    betas: tuple[float, float] = _key((0.9, 0.999), schema=False)
    eps: float = _key(1e-8, schema=False)
    dec_init_norm: float | None = _key(None, schema=False)  # None = sqrt(D / F) (paper A.2)
    normalize: str = _key("center_scale", schema=False)
    grad_clip: float | None = _key(1.0, schema=False)       # global gradient norm; None = off
    dense_threshold: float = _key(0.1, schema=False)  # "dense": fires on more of the eval tokens
    log_every: int = _key(10, schema=False)
    eval_fraction: float = _key(0.1, schema=False)    # held-out tail when the store has no segments

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")

    @classmethod
    def schema_keys(cls) -> tuple[str, ...]:
        """Fields that are keys of the config's ``saes`` section."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["schema"])

    @classmethod
    def overridable(cls) -> tuple[str, ...]:
        """Keys that ``saes.overrides.<model>.<layer>`` may change."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["override"])

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SAETrainConfig:
        """The config of a recipe dict (:func:`universality.workflow.config.sae_options`);
        missing keys keep their defaults, unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown SAE training options {unknown}")
        return cls(**options)

    def replace(self, **changes: Any) -> SAETrainConfig:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
