"""Pearson / MPPC settings: the ``pearson`` section of the config as a dataclass.

The single source of the section's defaults (``tests/sae/test_sae_config.py`` checks the schema
against it). Units: both count token rows per streamed chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PearsonConfig"]


@dataclass(frozen=True)
class PearsonConfig:
    """Chunking of the Pearson correlation of two feature sets (see :mod:`universality.compare.pearson`)."""

    chunk_rows: int = 8192          # token rows per chunk of the pairwise correlation
    feature_chunk_rows: int = 8192  # token rows per chunk when SAE features are encoded
