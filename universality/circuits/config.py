"""Circuit-analysis settings: the ``circuits`` section of the config as a dataclass.

The single source of the section's defaults (``tests/sae/test_sae_config.py`` checks the schema
against it). Units: ``distances`` and ``score_length`` count tokens, ``prompts`` prompts per
distance, ``batch_size`` prompts per forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CircuitsConfig"]


@dataclass(frozen=True)
class CircuitsConfig:
    """Induction-circuit path patching (paper Sec. 6, App. G; see :mod:`universality.circuits`)."""

    models: tuple[str, ...] | None = None             # None = every gpt_neox and mamba model
    distances: tuple[int, ...] = (8, 16, 32, 64, 128)  # A1-A2 distances of [A][B]...[A] prompts
    prompts: int = 128
    batch_size: int = 32
    score_length: int = 32                            # |R| of the [BOS] R R scoring rows
    seed: int = 0
