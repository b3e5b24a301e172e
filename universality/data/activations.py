"""Collect activations of every layer of one model at one site into chunked, compressed Zarr.

Row order is the contract that makes models comparable: row ``r`` of every model's eval segment
is the same token (see :func:`token_rows`). Each store ``L{layer}.zarr`` has attrs ``segments``:
``{"sae": [0, n_sae], "eval": [n_sae, n_sae + n_eval]}`` (the neuron site stores only ``eval``),
rows of the ``sae`` segment come from the train split (SAE training), rows of ``eval`` from
held-out documents (SAE evaluation, features, MPPC).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from universality.data import corpus
from universality.models import registry as models
from universality.core import store
from universality.core.device import as_device


def token_rows(tokens: corpus.TokenSet, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` scored tokens of a token set as (window [n] int64, position [n] int64).

    Windows are read in order; BOS positions are excluded, as in the paper.
    """
    win, pos = [], []
    total = 0
    for w in range(len(tokens)):
        ids = tokens.window(w)
        keep = np.flatnonzero(ids != tokens.bos_id)
        take = keep[: n - total]
        win.append(np.full(len(take), w, dtype=np.int64))
        pos.append(take.astype(np.int64))
        total += len(take)
        if total >= n:
            break
    if total < n:
        raise ValueError(
            f"token set {tokens.attrs.get('split')!r} has only {total} scored tokens, {n} requested "
            "(lower activations.sae_tokens / activations.eval_tokens or use a larger corpus)"
        )
    return np.concatenate(win), np.concatenate(pos)


def _segment_plan(site: str, n_sae: int, n_eval: int) -> list[tuple[str, int]]:
    # The neuron baseline is only ever compared on the eval set; no SAE reads it.
    return [("eval", n_eval)] if site == "neuron" else [("sae", n_sae), ("eval", n_eval)]


@torch.no_grad()
def collect(
    model_dir: str,
    tokens_by_segment: dict[str, str],
    site: str,
    layers: list[int],
    n_sae: int,
    n_eval: int,
    out_dir: str,
    *,
    model_name: str,
    dtype: str = "float16",
    batch_size: int = 32,
    chunk_rows: int = store.DEFAULT_CHUNK_ROWS,
    device: str | torch.device = "cpu",
) -> dict:
    """Write ``out_dir/L{layer}.zarr`` ([rows, D] ``dtype``) for every layer in one forward pass.

    ``tokens_by_segment`` maps ``sae``/``eval`` to token-set paths. The forward runs on
    ``device`` (see :mod:`universality.core.device`); only the kept rows come back to the CPU.
    Returns the manifest.
    """
    device = as_device(device)
    model = models.load_model(model_dir).to(device)
    width = models.site_width(model, site)
    plan = _segment_plan(site, n_sae, n_eval)
    n_rows = sum(n for _, n in plan)
    segments, start = {}, 0
    for name, n in plan:
        segments[name] = [start, start + n]
        start += n
    with store.atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        writers = {}
        for layer in layers:
            attrs = {
                "model": model_name, "layer": layer, "site": site, "dtype": dtype, "segments": segments,
                "token_sets": {s: corpus.TokenSet(p).attrs["sha256"] for s, p in tokens_by_segment.items()},
            }
            arr = store.create_array(tmp / f"L{layer}.zarr", (n_rows, width), dtype, chunk_rows, attrs)
            writers[layer] = store.RowWriter(arr)
        sites = [(site, layer) for layer in layers]
        bar = tqdm(total=n_rows, desc=f"activations {model_name}/{site}", unit="tok", mininterval=5)
        for segment, n in plan:
            tokens = corpus.TokenSet(tokens_by_segment[segment])
            win, pos = token_rows(tokens, n)
            all_wins = np.unique(win)
            for lo in range(0, len(all_wins), batch_size):
                wins = all_wins[lo : lo + batch_size]
                ids = tokens.padded(wins, int(tokens.lengths()[wins].max()))
                with models.capture(model, sites) as cache:
                    models.logits_of(model, torch.from_numpy(ids).to(device))
                # Rows of this batch in token_rows order: window-major, then position.
                sel = np.isin(win, wins)
                row_win = torch.from_numpy(np.searchsorted(wins, win[sel])).to(device)
                row_pos = torch.from_numpy(pos[sel]).to(device)
                for layer in layers:
                    # select on the device, copy only the kept rows
                    acts = cache[(site, layer)][row_win, row_pos].float().cpu().numpy()
                    writers[layer].append(acts)
                bar.update(int(sel.sum()))
        bar.close()
        for w in writers.values():
            w.close()
        for layer in layers:  # readers open one layer store each: each gets its own record
            store.seal(tmp / f"L{layer}.zarr")
    manifest = {"model": model_name, "site": site, "layers": {}}
    for layer in layers:
        manifest["layers"][str(layer)] = store.array_manifest(Path(out_dir) / f"L{layer}.zarr")
    return manifest
