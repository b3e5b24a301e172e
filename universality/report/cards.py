"""Feature-pair cards (the paper's Fig. 4): matched pairs and their top activating contexts.

For a comparison's forward MPPC table, pairs (feature i of A, its best match j in B) are sampled
across MPPC bins; for each side the top-k activating tokens are shown in their context of
``2 * context + 1`` tokens (the paper shows 17-token contexts: 8 before, the token, 8 after),
every token with that feature's activation so that the page can shade it. Contexts stay inside
one window of the token set (windows are cut from one document; BOS is never shown).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universality.report.complexity import load_csc, row_tokens, top_rows


def sample_pairs(forward: pd.DataFrame, bins: list[float], per_bin: int, seed: int) -> pd.DataFrame:
    """Up to ``per_bin`` matched pairs per MPPC bin ``[lo, hi)`` (the last bin includes ``hi``).

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
        take = rng.choice(len(in_bin), size=min(per_bin, len(in_bin)), replace=False)
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
        """``{"layer", "feature", "fires", "max", "contexts": [{"tokens": [str], "acts": [float], "centre": int}]}``."""
        csc = self._layer(layer)
        _, win, pos, tokens = self._rows
        column = np.asarray(csc[:, feature].toarray()).ravel()
        rows, vals = top_rows(csc, feature, k)
        contexts = []
        for r in rows:
            w, p = int(win[r]), int(pos[r])
            length = int(tokens.offsets[w + 1] - tokens.offsets[w])
            lo, hi = max(1, p - self.context), min(length - 1, p + self.context)
            span = np.arange(lo, hi + 1)
            # the window's rows, in position order (token_rows is window-major)
            first, last = np.searchsorted(win, w, side="left"), np.searchsorted(win, w, side="right")
            at = first + np.searchsorted(pos[first:last], span)
            scored = (at < last) & (pos[np.minimum(at, len(pos) - 1)] == span)
            window_ids = tokens.window(w)
            contexts.append({
                "tokens": [self.decode(int(window_ids[q])) for q in span],
                # positions without a row (a cut last window) have no activation: shown as 0
                "acts": [float(column[a]) if ok else 0.0 for a, ok in zip(at, scored)],
                "centre": int(np.flatnonzero(span == p)[0]),
            })
        fires = int(csc.indptr[feature + 1] - csc.indptr[feature])
        return {"layer": int(layer), "feature": int(feature), "fires": fires,
                "max": float(vals[0]) if len(vals) else 0.0, "contexts": contexts}


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
