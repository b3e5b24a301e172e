"""Toy-model training recipe: the ``training`` section of the config as a dataclass.

The single source of the section's defaults (``tests/sae/test_sae_config.py`` checks the schema
against it); a model's ``models.<name>.training`` may override any key. Units: ``batch_size``
and ``*_rows`` count windows (rows) per optimiser step, ``*_steps`` count optimiser steps,
``*_len`` count tokens per synthetic row, ``eval_tokens`` counts tokens; ``lr`` is AdamW's
peak step size (linear warm-up, cosine decay to 0.1 lr), ``weight_decay`` AdamW's decoupled decay.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainingConfig"]


@dataclass(frozen=True)
class TrainingConfig:
    """How a toy model of the zoo is trained (see :mod:`universality.zoo.train`)."""

    batch_size: int = 16
    lr: float = 2.0e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    induction_rows: int = 32                       # synthetic [BOS] R R ... rows per step
    induction_warmup_steps: int = 400              # first steps on synthetic rows only
    induction_len: int = 64
    induction_warmup_len: int | None = None        # None = induction_len
    induction_warmup_rows: int | None = None       # None = induction_rows
    induction_warmup_text_rows: int = 0            # natural windows per warm-up step
    eval_tokens: int = 65536
