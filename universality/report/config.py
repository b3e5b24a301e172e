"""Report settings: the ``report`` section of the config as a dataclass.

The single source of the section's defaults (``tests/sae/test_sae_config.py`` checks the schema
against it). Units: ``card_bins`` are MPPC values, ``top_k`` activations per feature,
``context`` tokens each side of an activation, ``layer_groups`` groups of consecutive layers.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReportConfig"]


@dataclass(frozen=True)
class ReportConfig:
    """Roles of the comparisons and the feature cards (see :mod:`universality.report`)."""

    difference: tuple[str, str] | None = None  # [cross, skyline]; None = inferred
    cards: tuple[str, ...] | None = None       # None = the cross comparison
    card_bins: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
    cards_per_bin: int = 2
    top_k: int = 10
    context: int = 8
    layer_groups: int = 4
    seed: int = 0                              # seed of the card sampling
