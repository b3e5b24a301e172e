"""Feature-pair cards (the paper's Fig. 4): matched pairs and their top activating contexts.

For a comparison's forward MPPC table, pairs (feature i of A, its best match j in B) are sampled
across MPPC bins; for each side the top-k activating samples (distinct windows, each shown once
around its peak) are shown in contexts of ``2 * context + 1`` tokens (the paper feeds its judge
17-token contexts: App. E), every token with that feature's activation so that the page can shade
it. Contexts stay inside one window of the token set (windows are cut from one document; BOS is
never shown); near a window's edge the span shifts inward rather than being cut.
The LLM judge (:mod:`universality.report.judge`) reads the same contexts.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universality.report.complexity import load_csc, row_tokens, top_rows


def sample_pairs(forward: pd.DataFrame, bins: list[float], per_bin: int | None, seed: int) -> pd.DataFrame:
    """Up to ``per_bin`` matched pairs per MPPC bin ``[lo, hi)`` (the last bin includes ``hi``);
    ``per_bin`` None takes every pair.

    Deterministic for a given ``seed``; sorted by MPPC, highest first. Adds a ``bin`` column.
    """
    valid = forward[forward["mppc"].notna() & (forward["match_layer"] >= 0)]
    rng = np.random.default_rng(seed)
    picked = []
    for i, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
        last = i == len(bins) - 2
        in_bin = valid[(valid["mppc"] >= lo) & ((valid["mppc"] <= hi) if last else (valid["mppc"] < hi))]
        if len(in_bin) == 0:
            continue
        size = len(in_bin) if per_bin is None else min(per_bin, len(in_bin))
        take = rng.choice(len(in_bin), size=size, replace=False)
        rows = in_bin.iloc[np.sort(take)].copy()
        rows["bin"] = f"[{lo:g}, {hi:g}{']' if last else ')'}"
        picked.append(rows)
    if not picked:
        return valid.head(0).assign(bin=pd.Series(dtype=str))
    return pd.concat(picked).sort_values(["mppc", "layer", "feature"], ascending=[False, True, True],
                                         ignore_index=True)


class ContextReader:
    """Top-k contexts of features of one model's feature stores over the eval tokens."""

    def __init__(self, stores: dict[int, str], tokens_path: str, decode, context: int = 8):
        self.stores, self.decode, self.context = stores, decode, context
        self.tokens_path = tokens_path
        self._csc: dict[int, object] = {}
        self._rows = None

    def _layer(self, layer: int):
        if layer not in self._csc:
            if layer not in self.stores:
                raise KeyError(f"no feature store for layer {layer} (have {sorted(self.stores)})")
            self._csc[layer] = load_csc(self.stores[layer])
            if self._rows is None:
                self._rows = row_tokens(self.tokens_path, self._csc[layer].shape[0])
        return self._csc[layer]

    def feature(self, layer: int, feature: int, k: int) -> dict:
        """The feature's top ``k`` activating samples, as the paper feeds them to its judge (App. E).

        Returns ``{"layer", "feature", "fires", "max", "contexts": [{"tokens": [str], "acts":
        [float], "centre": int, "window": int}]}``: one context per distinct window (its peak, the
        highest activation in that window; windows ranked by peak, ties: lower row first), each
        ``2 * context + 1`` tokens around the peak, shifted (not clipped) to stay inside the
        window, BOS never shown; every token with this feature's activation.
        """
        csc = self._layer(layer)
        _, win, pos, tokens = self._rows
        column = np.asarray(csc[:, feature].toarray()).ravel()
        rows, vals = top_rows(csc, feature, csc.shape[0])
        # first occurrence of each window in activation order = that window's peak
        _, first = np.unique(win[rows], return_index=True)
        peaks = np.sort(first)[:k]
        contexts = [self._context(column, int(rows[i]), tokens) for i in peaks]
        fires = int(csc.indptr[feature + 1] - csc.indptr[feature])
        return {"layer": int(layer), "feature": int(feature), "fires": fires,
                "max": float(vals[0]) if len(vals) else 0.0, "contexts": contexts}

    def _context(self, column: np.ndarray, r: int, tokens) -> dict:
        """The ``2 * context + 1`` tokens of row ``r``'s window around its position."""
        _, win, pos, _ = self._rows
        w, p = int(win[r]), int(pos[r])
        length = int(tokens.offsets[w + 1] - tokens.offsets[w])
        width = 2 * self.context + 1
        # positions 1 .. length - 1 (0 is BOS); shift the span inward at the window's edges
        lo = max(1, min(p - self.context, length - width))
        hi = min(length - 1, lo + width - 1)
        span = np.arange(lo, hi + 1)
        # the window's rows, in position order (token_rows is window-major)
        first, last = np.searchsorted(win, w, side="left"), np.searchsorted(win, w, side="right")
        at = first + np.searchsorted(pos[first:last], span)
        scored = (at < last) & (pos[np.minimum(at, len(pos) - 1)] == span)
        window_ids = tokens.window(w)
        return {
            "tokens": [self.decode(int(window_ids[q])) for q in span],
            # positions without a row (a cut last window) have no activation: shown as 0
            "acts": [float(column[a]) if ok else 0.0 for a, ok in zip(at, scored)],
            "centre": int(np.flatnonzero(span == p)[0]), "window": w,
        }


def build_cards(forward: pd.DataFrame, reader_a: ContextReader, reader_b: ContextReader, *,
                bins: list[float], per_bin: int, top_k: int, seed: int) -> list[dict]:
    """One card per sampled pair: its MPPC, bin, and the top-k contexts of both features."""
    cards = []
    for row in sample_pairs(forward, bins, per_bin, seed).itertuples(index=False):
        cards.append({
            "mppc": float(row.mppc), "bin": row.bin,
            "a": reader_a.feature(int(row.layer), int(row.feature), top_k),
            "b": reader_b.feature(int(row.match_layer), int(row.match_feature), top_k),
        })
    return cards


def token_decoder(tokenizer_path: str):
    """id -> printable text of one token (byte-level pieces that split a character become U+FFFD)."""
    from universality.data.corpus import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in cache:
            cache[i] = tok.decode([i], skip_special_tokens=False)
        return cache[i]

    return decode
