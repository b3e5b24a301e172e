"""Which features the judge scores, and the samples it reads (paper Sec. 5.2, App. E).

Features: a stratified sample of the features of A of one comparison, ``per_bin`` per MPPC bin
(:func:`universality.report.cards.sample_pairs`), so that every bin of Fig. 5 is populated even
where the MPPC distribution is skewed. Samples: each feature's ten top-activating samples, one per
distinct window, 17 tokens around the peak, every token with its activation
(:meth:`universality.report.cards.ContextReader.feature`, the same contexts as the cards).

In the text the judge reads, activations are integers 0..10 relative to the feature's maximum
(10 = its top activation; Bills et al. 2023 scale them the same way), each after its token.
"""
from __future__ import annotations

import math

import pandas as pd

from universality.report.cards import ContextReader, sample_pairs

#: Version of :func:`format_samples`'s text; part of every score's prompt hash.
FORMAT_VERSION = "samples-v1: one line per sample, token[activation 0-10]"


def choose_features(forward: pd.DataFrame, bins: list[float], per_bin: int | None, seed: int) -> pd.DataFrame:
    """The features of A to score: ``layer, feature, mppc, bin`` (``per_bin`` None = all)."""
    picked = sample_pairs(forward, bins, per_bin, seed)
    return picked[["layer", "feature", "mppc", "bin"]].sort_values(["layer", "feature"], ignore_index=True)


def gather(reader: ContextReader, chosen: pd.DataFrame, k: int) -> list[dict]:
    """Per chosen feature: its samples (``ContextReader.feature``) with its MPPC and bin."""
    out = []
    for row in chosen.itertuples(index=False):
        f = reader.feature(int(row.layer), int(row.feature), k)
        out.append({**f, "mppc": float(row.mppc), "bin": row.bin})
    return out


def show_token(token: str) -> str:
    """A token as the judge sees it: newlines and tabs escaped, brackets kept readable."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def format_samples(feature: dict) -> str:
    """The samples block after the prompt: one line per sample, each token followed by
    ``[a]`` with ``a`` = 10 * activation / the feature's maximum, rounded half up, 0 where it does not fire."""
    top = feature["max"]
    lines = []
    for i, ctx in enumerate(feature["contexts"], 1):
        # half up (2.5 -> 3), not Python's half-to-even
        scaled = [0 if top <= 0 else int(math.floor(10 * max(a, 0.0) / top + 0.5)) for a in ctx["acts"]]
        lines.append(f"Sample {i}: " + "".join(f"{show_token(t)}[{a}]" for t, a in zip(ctx["tokens"], scaled)))
    if not lines:
        lines.append("(the feature never fires on the evaluation tokens)")
    return "\n".join(lines)
