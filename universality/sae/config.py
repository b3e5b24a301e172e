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

__all__ = ["SAETrainConfig", "SAESweepConfig", "NORMALIZATIONS", "L1_PENALTIES", "SWEEP_SEED_KEYS"]

#: Input normalisations (see :mod:`universality.sae.buffer`).
NORMALIZATIONS = ("center_scale", "scale", "none")
#: Sparsity penalty forms (see :func:`universality.sae.model.loss_and_grads`): ``decoder_norm``
#: = ``sum_i f_i ||W_dec[i]||`` (SAELens' standard SAE, Anthropic's April 2024 update), ``plain``
#: = ``sum_i f_i`` (the L1 on f(x) that the paper's Sec. 3.3 states; decoder unconstrained).
L1_PENALTIES = ("decoder_norm", "plain")


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
    l1_penalty: str = _key("decoder_norm", override=True)  # one of L1_PENALTIES
    l1_warmup: float = _key(0.05, override=True)      # linear l1 warm-up over this first fraction
    betas: tuple[float, float] = _key((0.9, 0.999), schema=False)
    eps: float = _key(1e-8, schema=False)
    dec_init_norm: float | None = _key(None, schema=False)  # None = sqrt(D / F) (paper A.2)
    normalize: str = _key("center_scale", override=True)    # one of NORMALIZATIONS
    grad_clip: float | None = _key(1.0, override=True)      # global gradient norm; None = off
    dense_threshold: float = _key(0.1, schema=False)  # "dense": fires on more of the eval tokens
    log_every: int = _key(10, schema=False)
    eval_fraction: float = _key(0.1, schema=False)    # held-out tail when the store has no segments

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.l1_penalty not in L1_PENALTIES:
            raise ValueError(f"l1_penalty must be one of {L1_PENALTIES}, got {self.l1_penalty!r}")
        if not 0.0 <= self.l1_warmup <= 1.0:
            raise ValueError(f"l1_warmup must be a fraction in [0, 1], got {self.l1_warmup}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or null (off), got {self.grad_clip}")

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


#: Keys a sweep variant may set besides the overridable recipe keys: the two seeds of a run.
SWEEP_SEED_KEYS = ("init_seed", "data_seed")


@dataclass(frozen=True)
class SAESweepConfig:
    """The SAE-invariance sweep (paper Sec. 4.3.2, the innermost "SAE variables" circle): variants
    of one base SAE (``model``, resid ``layer``, seed ``base_seed``, the recipe of ``saes`` for
    that (model, layer)), each trained, encoded and compared with the base SAE by MPPC.

    ``variants`` maps a name to the changes of that variant: any :meth:`SAETrainConfig.overridable`
    key and/or ``init_seed`` / ``data_seed`` (the weight initialisation alone / the data order
    alone; both default to ``base_seed``). ``null_shift > 0`` adds the permutation null "null":
    base vs the first variant by name with the variant's tokens rolled by ``null_shift``. ``model=None``
    (the default) means no sweep.
    """

    model: str | None = None
    layer: int = 0
    base_seed: int = 0
    null_shift: int = 0
    variants: dict = field(default_factory=dict)
