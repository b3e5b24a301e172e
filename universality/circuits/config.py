"""Circuit-analysis settings: the ``circuits`` section of the config as a dataclass.

The single source of the section's defaults (``tests/workflow/test_stage_configs.py`` checks the
schema against it). Units: ``distances`` and ``score_length`` count tokens, ``prompts`` prompts per
distance (and IOI prompts), ``batch_size`` prompts per forward pass, ``bootstrap`` resamples of
the prompts, ``ci_level`` the interval's coverage.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CircuitsConfig"]


@dataclass(frozen=True)
class CircuitsConfig:
    """Induction-circuit path patching (paper Sec. 6, App. G-H; see :mod:`universality.circuits`)."""

    models: tuple[str, ...] | None = None             # None = every model with a circuits capability
    distances: tuple[int, ...] = (8, 16, 32, 64, 128)  # A1-A2 distances of [A][B]...[A] prompts
    prompts: int = 128                                # per distance (paper App. G: 128 per condition)
    batch_size: int = 32
    score_length: int = 32                            # |R| of the [BOS] R R scoring rows
    seed: int = 0
    bootstrap: int = 1000                             # resamples of the prompts per interval (0: none)
    ci_level: float = 0.95                            # percentile interval of the resampled means
    broader_variants: bool = True                     # also state_all_positions, *_all_paths tables
    path_receivers: int = 1                           # induction heads that receive head path patching
