"""Comparisons: Pearson sums per layer pair, and their reduction to MPPC tables.

A comparison (``config["comparisons"][name]``) pairs model A with model B:
- ``kind: sae``: SAE features of A (seed ``seed_a``) against SAE features of B (``seed_b``);
- ``kind: neuron``: the dense neuron-basis site of A against that of B (the baseline);
- ``shift: k`` > 0 pairs token t of A with token (t + k) mod N of B: the permutation null.

MPPC of a feature i of A is the max over every feature j of every layer of B of the Pearson
correlation of their activations over the eval tokens, with its argmax (layer, feature).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from universality.compare import pearson
from universality.core.integrity import StoreError, content_id
from universality.sae.readers import CSRStore, DenseEval

if TYPE_CHECKING:  # pandas is imported where the tables are built (reduce)
    import pandas as pd

#: What every pair file holds beyond the arrays of PearsonAccumulator.result: its layer pair, and
#: the identity of its inputs (content ids of both stores, the comparison's kind and shift).
PAIR_KEYS = ("la", "lb", "a_id", "b_id", "kind", "shift", "row_max", "row_arg", "col_max", "col_arg")
_PAIR_NAME = re.compile(r"^A(\d+)_B(\d+)\.npz$")


def open_source(path: str, kind: str):
    return CSRStore(path) if kind == "sae" else DenseEval(path)


def eval_token_hash(attrs: dict) -> str | None:
    """The hash of the eval token set a store's rows come from (None if it does not record one)."""
    return (attrs.get("token_sets") or {}).get("eval")


def check_same_tokens(a_path: str, a_attrs: dict, b_path: str, b_attrs: dict) -> None:
    """Both sides of a layer pair must be rows of the same eval token set."""
    ha, hb = eval_token_hash(a_attrs), eval_token_hash(b_attrs)
    if ha is not None and hb is not None and ha != hb:
        raise ValueError(f"eval token sets differ: {a_path} has rows of token set {ha}, {b_path} of {hb} "
                         "(rerun the activations and features of the stale side)")


def pair(a_path: str, b_path: str, kind: str, shift: int, out: str, *, chunk_rows: int = 8192,
         backend: str = "auto", meta: dict | None = None, top_k: int = 0) -> dict:
    """Stream one layer pair; write row/col max and argmax (``pearson/{comparison}/A{la}_B{lb}.npz``),
    and with ``top_k`` > 0 the ``top_k`` best candidates per feature in both directions (the
    one-to-one matching's graph, :mod:`universality.compare.matching`)."""
    a, b = open_source(a_path, kind), open_source(b_path, kind)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"token counts differ: {a_path} has {a.shape[0]} rows, {b_path} has {b.shape[0]}")
    check_same_tokens(a_path, a.attrs, b_path, b.attrs)
    if shift and shift % a.shape[0] == 0:
        raise ValueError(f"shift {shift} is a multiple of the {a.shape[0]} eval tokens: the 'null' would pair "
                         "every token with itself (choose a shift that is not 0 mod the token count)")
    acc = pearson.PearsonAccumulator(a.shape[1], b.shape[1], backend=backend,
                                     mode="sparse" if kind == "sae" else "dense")
    b_chunks = pearson.rolled_chunks(b, shift, chunk_rows) if shift else b.chunks(chunk_rows)
    for a_chunk, b_chunk in zip(a.chunks(chunk_rows), b_chunks):
        acc.update(a_chunk, b_chunk)
    result = acc.result(top_k=top_k)
    # bound to its inputs: the reduction refuses a pair file of other stores (load_pairs)
    ident = {"a_id": content_id(a_path), "b_id": content_id(b_path), "kind": kind, "shift": int(shift)}
    pearson.save_result(out, result, **{**(meta or {}), **ident})
    return result


def load_pairs(files: list[str], kind: str, shift: int, a_stores: dict, b_stores: dict) -> dict[tuple[int, int], dict]:
    """The pair files of one comparison -> ``{(la, lb): result}``, checked: each file is a pair
    file (decodable, no pickle, every key of :data:`PAIR_KEYS`), of the layer pair its name says,
    computed from the stores the comparison reads now (``a_stores`` / ``b_stores``: ``{layer:
    store path}``, compared by content id) with this ``kind`` and ``shift``; and every layer pair
    of the grid is there. Anything else raises StoreError (or ValueError) naming the file or the
    missing layer pair."""
    stores = {"a": {int(l): p for l, p in a_stores.items()}, "b": {int(l): p for l, p in b_stores.items()}}
    ids = {(side, layer): content_id(p) for side in stores for layer, p in stores[side].items()}
    out: dict[tuple[int, int], dict] = {}
    for f in files:
        r = pearson.load_result(f)
        missing = [k for k in PAIR_KEYS if k not in r]
        if missing:
            raise StoreError(f"{f}: not a pair file of this pipeline (no {', '.join(missing)}); rerun pearson_pair")
        key = (int(r["la"]), int(r["lb"]))
        named = _PAIR_NAME.match(Path(f).name)
        if named and (int(named[1]), int(named[2])) != key:
            raise StoreError(f"{f}: holds layer pair A{key[0]}_B{key[1]}, not the one its name says (a misnamed "
                             "or copied file); rerun pearson_pair")
        if key in out:
            raise StoreError(f"{f}: layer pair A{key[0]}_B{key[1]} given twice")
        for side, layer in (("a", key[0]), ("b", key[1])):
            want = ids.get((side, layer))
            if want is None:
                raise StoreError(f"{f}: layer {layer} of side {side.upper()} is not a layer of this comparison")
            if str(r[f"{side}_id"]) != want:
                raise StoreError(f"{f}: computed from other inputs than this comparison's {side.upper()} store "
                                 f"{stores[side][layer]} (content id "
                                 f"{r[side + '_id']}, the store's is {want}): stale or from another comparison; "
                                 "rerun pearson_pair")
        if str(r["kind"]) != kind or int(r["shift"]) != int(shift):
            raise StoreError(f"{f}: computed as kind {r['kind']!r}, shift {int(r['shift'])}; this comparison is "
                             f"kind {kind!r}, shift {int(shift)}: rerun pearson_pair")
        out[key] = r
    check_grid(out, sorted(stores["a"]), sorted(stores["b"]))
    return out


def check_grid(pair_results: dict, layers_a: list[int], layers_b: list[int]) -> None:
    """Every (la, lb) of the grid has a result; ValueError naming the missing pair files."""
    missing = [f"A{la}_B{lb}.npz" for la in layers_a for lb in layers_b if (la, lb) not in pair_results]
    if missing:
        raise ValueError(f"{len(missing)} layer pair(s) missing from the comparison's pair files, first "
                         f"{missing[0]} (layers A {layers_a} x B {layers_b}): rerun pearson_pair for them")


def reduce(pair_results: dict[tuple[int, int], dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Forward (A->B) and reverse (B->A) MPPC tables from ``{(la, lb): result}``.

    Each table has one row per feature: ``layer, feature, mppc, match_layer, match_feature``;
    excluded features (never fire or constant on the eval tokens) have NaN mppc and -1 matches.
    """
    import pandas as pd  # here, not at the top: every pearson_pair job imports this module
    layers_a = sorted({la for la, _ in pair_results})
    layers_b = sorted({lb for _, lb in pair_results})
    check_grid(pair_results, layers_a, layers_b)  # a missing pair: named, not KeyError (0, 0)

    def table(side_layers, other_layers, key_of, max_key, arg_key):
        rows = []
        for layer in side_layers:
            maxes = np.stack([np.asarray(pair_results[key_of(layer, o)][max_key], dtype=np.float64) for o in other_layers])
            args = np.stack([np.asarray(pair_results[key_of(layer, o)][arg_key]) for o in other_layers])
            valid = ~np.isnan(maxes).all(axis=0)
            best = np.where(valid, np.nanargmax(np.where(np.isnan(maxes), -np.inf, maxes), axis=0), -1)
            n = maxes.shape[1]
            cols = np.arange(n)
            rows.append(pd.DataFrame({
                "layer": layer,
                "feature": cols,
                "mppc": np.where(valid, maxes[np.maximum(best, 0), cols], np.nan),
                "match_layer": np.where(valid, np.asarray(other_layers)[np.maximum(best, 0)], -1),
                "match_feature": np.where(valid, args[np.maximum(best, 0), cols], -1),
            }))
        return pd.concat(rows, ignore_index=True)

    forward = table(layers_a, layers_b, lambda la, lb: (la, lb), "row_max", "row_arg")
    reverse = table(layers_b, layers_a, lambda lb, la: (la, lb), "col_max", "col_arg")
    return forward, reverse


def summary(forward: pd.DataFrame) -> dict:
    """Counts and the mean MPPC of the features that have one."""
    m = forward["mppc"]
    return {"features": int(len(m)), "excluded": int(m.isna().sum()), "mean_mppc": float(m.mean()),
            "share_above_0.95": float((m.dropna() > 0.95).mean()) if m.notna().any() else float("nan")}
