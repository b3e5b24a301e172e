"""Compare-stage settings: the ``pearson`` and ``measures`` sections of the config as dataclasses.

The single source of the sections' defaults (``tests/workflow/test_stage_configs.py`` checks the
schema against them). Units: ``chunk_rows`` count token rows per streamed chunk; ``top_k``
candidates per feature and layer pair; ``thresholds`` are Pearson r; ``cka_tokens`` eval rows.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PearsonConfig", "MeasuresConfig"]


@dataclass(frozen=True)
class PearsonConfig:
    """Chunking of the Pearson correlation of two feature sets (see :mod:`universality.compare.pearson`)."""

    chunk_rows: int = 8192          # token rows per chunk of the pairwise correlation
    feature_chunk_rows: int = 8192  # token rows per chunk when SAE features are encoded
    top_k: int = 5                  # best candidates kept per feature and layer pair (matching)


@dataclass(frozen=True)
class MeasuresConfig:
    """The measures beside MPPC (depth statistics, one-to-one matching, CKA / SVCCA / RSA)."""

    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)  # r above which a one-to-one match counts
    coverage: float = 0.8          # App. C: share of matches the first B layers must hold
    permutations: int = 100        # shuffled pairings per permutation p-value
    cka_tokens: int = 16384        # eval rows read by CKA / SVCCA / RSA (the first ones)
    svcca_dims: int = 20           # SVD directions kept on each side before CCA
    rsa_features: int = 256        # matched pairs in the RSA dissimilarity matrices (top by r)
    seed: int = 0                  # seed of the permutations
