"""Metrics of a trained SAE: reconstruction and sparsity on held-out rows, CE-loss recovered."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from universality.sae.config import SAETrainConfig
from universality.sae.model import SAE

__all__ = ["evaluate", "explained_variance", "ce_loss_recovered", "DEFAULT_DENSE_THRESHOLD"]

#: A feature is "dense" when it fires on more than this fraction of evaluation tokens.
DEFAULT_DENSE_THRESHOLD = SAETrainConfig.dense_threshold


def explained_variance(x: np.ndarray, x_hat: np.ndarray) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean_tokens(x)||^2`` (one number over all tokens)."""
    x = np.asarray(x, np.float64)
    x_hat = np.asarray(x_hat, np.float64)
    sst = float(((x - x.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((x - x_hat) ** 2).sum()) / sst if sst > 0 else float("nan")


def ce_loss_recovered(clean: float, spliced: float, zero_ablated: float) -> float:
    """Fraction of the cross-entropy loss recovered by splicing the SAE in:
    ``(CE_zero - CE_spliced) / (CE_zero - CE_clean)`` (1 = perfect, 0 = as bad as zero-ablating).
    NaN when the zero-ablation does not change the loss."""
    denom = float(zero_ablated) - float(clean)
    if denom == 0 or not math.isfinite(denom):
        return float("nan")
    return (float(zero_ablated) - float(spliced)) / denom


def _as_range(rows, n: int) -> tuple[int, int]:
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step != 1:
            raise ValueError("evaluation rows must be a contiguous slice")
        return start, stop
    if isinstance(rows, range):
        if rows.step != 1:
            raise ValueError("evaluation rows must be a contiguous range")
        return rows.start, rows.stop
    start, stop = rows
    return int(start), int(stop)


@torch.no_grad()
def evaluate(sae: SAE, array, rows, *, batch_rows: int = 2048,
             dense_threshold: float = DEFAULT_DENSE_THRESHOLD, return_counts: bool = False,
             ) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of ``sae`` on ``array[rows]`` (streamed, float64 sums).

    ``sae`` reads raw activations (a saved SAE has its input normalisation folded in).
    ``rows`` is a slice, a range or ``(start, stop)``. Returns
    ``explained_variance`` (see :func:`explained_variance`), ``mse`` (squared error per
    element), ``mse_per_token`` (summed over D), ``mean_l0`` (features > 0 per token),
    ``dead_fraction`` (features that never fire on these tokens), ``dense_fraction`` (features
    firing on more than ``dense_threshold`` of the tokens), their counts, ``mean_sparsity``
    (``mean sum_i f_i ||W_dec[i]||``) and ``n_tokens``; plus ``feature_counts`` (firing counts
    per feature, an int64 array) when ``return_counts``.
    """
    start, stop = _as_range(rows, array.shape[0])
    n = stop - start
    if n <= 0:
        raise ValueError(f"no evaluation rows in [{start}, {stop})")
    D, F = sae.d_in, sae.d_sae
    dev = sae.W_enc.device  # evaluate where the SAE is; the float64 sums of x stay in NumPy
    dec_norm = sae.decoder_norms().detach().float()
    sse = 0.0
    sum_x = np.zeros(D, np.float64)
    sum_x2 = 0.0
    l0 = 0
    sparsity = 0.0
    counts = torch.zeros(F, dtype=torch.int64, device=dev)
    for s in range(start, stop, batch_rows):
        blk = np.asarray(array[s:min(s + batch_rows, stop)], dtype=np.float32)
        x = torch.from_numpy(blk).to(dev)
        f = torch.addmm(sae.b_enc.detach(), x, sae.W_enc.detach()).relu_()
        x_hat = sae.decode(f)
        sse += float((x_hat - x).double().pow(2).sum())
        xd = blk.astype(np.float64)
        sum_x += xd.sum(axis=0)
        sum_x2 += float(np.einsum("ij,ij->", xd, xd))
        fired = f > 0
        c = fired.sum(dim=0)
        counts += c
        l0 += int(c.sum())
        sparsity += float((f @ dec_norm).double().sum())
    sst = sum_x2 - float(sum_x @ sum_x) / n
    freq = counts.double() / n
    out: dict[str, Any] = {
        "n_tokens": n,
        "explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"),
        "mse": sse / (n * D),
        "mse_per_token": sse / n,
        "mean_l0": l0 / n,
        "n_dead": int((counts == 0).sum()),
        "dead_fraction": float((counts == 0).double().mean()),
        "n_dense": int((freq > dense_threshold).sum()),
        "dense_fraction": float((freq > dense_threshold).double().mean()),
        "dense_threshold": float(dense_threshold),
        "mean_sparsity": sparsity / n,
        "d_in": D,
        "d_sae": F,
    }
    if return_counts:
        out["feature_counts"] = counts.cpu().numpy()
    return out
