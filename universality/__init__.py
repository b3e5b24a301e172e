"""Cross-architecture universality of language-model features (Wang et al. 2024) as a pipeline."""

__version__ = "0.1.0"
