"""Data-stage settings: the ``corpus``, ``tokenizer`` and ``activations`` sections as dataclasses.

The single source of those sections' defaults (``tests/sae/test_sae_config.py`` checks the
schema against them). Units: ``*_tokens`` and ``chunk_rows`` count tokens (activation rows),
``batch_size`` counts windows per forward pass, ``max_len`` tokens per window (BOS included),
``eval_fraction`` is the fraction of documents in the eval split.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CorpusConfig", "TokenizerConfig", "ActivationsConfig"]


@dataclass(frozen=True)
class CorpusConfig:
    """Where the documents come from and how they are split (see :mod:`universality.data.corpus`)."""

    source: str = "stdlib"          # stdlib | glob | jsonl | hf
    path: str | None = None
    text_field: str = "text"
    hf_split: str = "train"
    max_documents: int | None = None
    eval_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer: byte-level BPE trained here, or a hub model's."""

    type: str = "bpe"               # bpe | hub
    hub_model: str | None = None
    revision: str | None = None     # hub revision in the local cache (None = main)
    vocab_size: int = 4096
    max_len: int = 256
    documents: str = "split"        # split | truncate (paper App. A.1); see corpus.windows


@dataclass(frozen=True)
class ActivationsConfig:
    """Which activations are stored and how (see :mod:`universality.data.activations`)."""

    sites: tuple[str, ...] = ("resid", "neuron")
    sae_tokens: int = 131072        # rows of the train split, for SAE training (resid only)
    eval_tokens: int = 65536        # rows of the eval split shared by every model
    dtype: str = "float16"
    batch_size: int = 32
    chunk_rows: int = 4096
