"""Toy-model training recipe: the ``training`` section of the config as a dataclass.

The single source of the section's defaults (``tests/sae/test_sae_config.py`` checks the schema
against it); a model's ``models.<name>.training`` may override any key. Units: ``batch_size``
and ``*_rows`` count windows (rows) per optimiser step, ``*_steps`` count optimiser steps,
``*_len`` count tokens per synthetic row, ``eval_tokens`` counts tokens; ``lr`` is AdamW's
peak step size (linear warm-up, cosine decay to 0.1 lr), ``weight_decay`` AdamW's decoupled decay.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainingConfig", "recipe_plan", "training_work"]


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


def recipe_plan(spec: dict, training: dict, max_len: int) -> dict:
    """Steps and rows of both phases of one model's recipe (``zoo.train.train`` follows it).

    ``warm`` synthetic warm-up steps of ``warm_rows`` rows x ``warm_len`` tokens plus
    ``warm_text`` natural windows; then ``text_steps`` steps of ``batch`` windows x ``max_len``
    plus ``synth_rows`` rows x ``synth_len``; ``steps`` = both (0 when ``train_tokens`` is 0).
    """
    synth_rows, synth_len = training["induction_rows"], min(training["induction_len"], max_len)
    warm_len = min(training.get("induction_warmup_len") or synth_len, max_len)
    warm_rows = training.get("induction_warmup_rows")
    warm_rows = synth_rows if warm_rows is None else warm_rows
    warm = training["induction_warmup_steps"] if warm_rows else 0
    batch = training["batch_size"]
    text_steps = max(1, -(-spec["train_tokens"] // (batch * max_len)))
    return {"warm": warm, "warm_rows": warm_rows, "warm_len": warm_len,
            "warm_text": training.get("induction_warmup_text_rows") or 0, "text_steps": text_steps,
            "batch": batch, "synth_rows": synth_rows, "synth_len": synth_len,
            "steps": warm + text_steps if spec["train_tokens"] > 0 else 0}


def training_work(spec: dict, training: dict, max_len: int) -> int:
    """Token-layers a training runs through (forward + backward): the scheduler's cost estimate.

    Used as the ``train_model`` job's Snakemake priority so that the longest trainings start
    first (on 2 cores the Mamba's training was the last job to start and ran alone for minutes).
    """
    if spec.get("source", "train") != "train" or spec["train_tokens"] <= 0:
        return 0
    p = recipe_plan(spec, training, max_len)
    tokens = (p["warm"] * (p["warm_rows"] * p["warm_len"] + p["warm_text"] * max_len)
              + p["text_steps"] * (p["batch"] * max_len + p["synth_rows"] * p["synth_len"]))
    return tokens * int(spec.get("n_layers") or 1)
