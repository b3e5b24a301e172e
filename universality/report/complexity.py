"""How token-bound is a feature? An objective complexity score, no LLM needed.

The paper (Sec. 5, Fig. 5a) has GPT-4o rate each feature's complexity from its top activations
and finds that simple features match best across models. We score the same property directly
from the activations over the eval tokens:

- ``token_share``: the share of the feature's activation variance explained by the identity of
  the current token, i.e. the correlation ratio eta^2 = between-token variance / total variance
  (1 = the activation is a function of the current token alone; 0 = unrelated to it);
- ``distinct_top``: the number of distinct current tokens among its top-k activations (1 = a
  single-token feature; k = every top activation on a different token).

eta^2 is biased upwards by about (distinct tokens - 1) / (tokens - 1) for a feature unrelated to
the token (each token's mean fits its own noise): ~0.015 for 1,024 token types over 65,536 eval
tokens, but large on a tiny eval set, so compare it across features of one run, not across runs.

Rows of a feature store are the eval token set's scored tokens in order
(:func:`universality.data.activations.token_rows`), so row ``r`` is token ``ids[r]`` for every model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from universality.data.activations import token_rows
from universality.data.corpus import TokenSet
from universality.sae.readers import CSRStore


def row_tokens(tokens_path: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, TokenSet]:
    """Token id, window and position of each of the first ``n`` feature-store rows ([n] int64 each)."""
    tokens = TokenSet(tokens_path)
    win, pos = token_rows(tokens, n)
    ids = tokens.ids[tokens.offsets[win] + pos].astype(np.int64)
    return ids, win, pos, tokens


def load_csc(path: str, n_rows: int | None = None) -> sp.csc_matrix:
    """A whole feature store as a [tokens, F] float32 CSC matrix (column = one feature)."""
    store = CSRStore(path)
    n = store.shape[0] if n_rows is None else n_rows
    if n != store.shape[0]:
        raise ValueError(f"{path}: {store.shape[0]} rows, expected {n} (stores of one comparison must align)")
    return store.rows(0, n).tocsc()


def token_share(acts: sp.spmatrix, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Correlation ratio eta^2 of each column of ``acts`` [N, F] with the token ids ``ids`` [N].

    eta^2 = sum_v n_v (mean_v - mean)^2 / sum_t (x_t - mean)^2, computed from sparse per-token
    sums in float64. NaN where a feature is constant on the eval tokens (no variance to explain).
    """
    acts = sp.csr_matrix(acts, dtype=np.float64)
    n = acts.shape[0]
    if ids.shape != (n,):
        raise ValueError(f"token ids have shape {ids.shape}, activations have {n} rows")
    onehot = sp.csr_matrix((np.ones(n), (ids, np.arange(n))), shape=(vocab_size, n))
    per_token = (onehot @ acts).tocsr()                      # [V, F] sums of x over each token id
    n_v = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    inv = np.divide(1.0, n_v, out=np.zeros_like(n_v), where=n_v > 0)
    mean = np.asarray(acts.sum(axis=0)).ravel() / n
    total = np.asarray(acts.multiply(acts).sum(axis=0)).ravel() - n * mean**2
    between = np.asarray((sp.diags(inv) @ per_token.multiply(per_token)).sum(axis=0)).ravel() - n * mean**2
    # tiny negative values are rounding; a share is in [0, 1]
    scale = np.maximum(np.abs(total), 1e-300)
    share = np.clip(between / scale, 0.0, 1.0)
    constant = total <= 1e-12 * np.maximum(np.asarray(acts.multiply(acts).sum(axis=0)).ravel(), 1e-300)
    return np.where(constant, np.nan, share)


def top_rows(csc: sp.csc_matrix, feature: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and values of the ``k`` largest positive activations of one feature (ties: lower row first)."""
    lo, hi = csc.indptr[feature], csc.indptr[feature + 1]
    rows, vals = csc.indices[lo:hi], csc.data[lo:hi]
    keep = vals > 0
    rows, vals = rows[keep], vals[keep]
    order = np.lexsort((rows, -vals))[:k]
    return rows[order].astype(np.int64), vals[order]


def distinct_top(csc: sp.csc_matrix, ids: np.ndarray, k: int) -> np.ndarray:
    """Distinct current tokens among each feature's top-``k`` activations [F] (0 if it never fires)."""
    out = np.zeros(csc.shape[1], dtype=np.int64)
    for j in range(csc.shape[1]):
        rows, _ = top_rows(csc, j, k)
        out[j] = len(np.unique(ids[rows]))
    return out


def score_stores(stores: dict[int, str], tokens_path: str, top_k: int) -> pd.DataFrame:
    """Complexity of every feature of one model's SAEs: ``{layer: feature store}`` -> one table.

    Columns: layer, feature, fires (tokens with a positive activation), token_share, distinct_top.
    """
    tables = []
    ids = None
    for layer in sorted(stores):
        csc = load_csc(stores[layer])
        if ids is None:
            ids, _, _, tokens = row_tokens(tokens_path, csc.shape[0])
            vocab = max(int(tokens.attrs.get("vocab_size", 0)), int(ids.max()) + 1)
        tables.append(pd.DataFrame({
            "layer": layer,
            "feature": np.arange(csc.shape[1]),
            "fires": np.diff(csc.indptr),
            "token_share": token_share(csc, ids, vocab),
            "distinct_top": distinct_top(csc, ids, top_k),
        }))
    return pd.concat(tables, ignore_index=True)
