"""Per-prompt circuit effects, collected batch by batch, and their tables with bootstrap intervals.

A row of a circuit table is one (experiment, distance, component, corruption); its effect is the
mean over prompts of ``patched - clean`` (the clean answer's logit, or logit(IO) - logit(S)),
beside ``corrupt - clean`` (the fully corrupted run). :class:`Effects` keeps the per-prompt
values so that every mean gets a bootstrap interval (:mod:`universality.circuits.bootstrap`) and a
key component is reported with the share of resamples in which it wins.

Rows are keyed by a dict of columns that holds ``distance`` (the prompt set: resampled together).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from universality.circuits import bootstrap

__all__ = ["Effects", "BOOT"]

#: Defaults of the bootstrap (the ``circuits`` config's ``bootstrap``, ``ci_level``, ``seed``).
BOOT = {"n_boot": 1000, "level": 0.95, "seed": 0}


class Effects:
    """Per-prompt clean / corrupted / patched values of every row of every table.

    Args:
        n_boot, level, seed: bootstrap resamples, interval level, seed (see ``bootstrap``).
    """

    def __init__(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
        self.n_boot, self.level, self.seed = n_boot, level, seed
        self._rows: dict[str, dict[tuple, list]] = {}
        self._idx: dict[tuple, np.ndarray] = {}

    def add(self, table: str, key: dict, clean: torch.Tensor, corrupt: torch.Tensor,
            patched: torch.Tensor) -> None:
        """Append one batch's values [b] (any float dtype) to the row ``key`` of ``table``."""
        parts = self._rows.setdefault(table, {}).setdefault(tuple(key.items()), [[], [], []])
        for part, v in zip(parts, (clean, corrupt, patched)):
            part.append(v.detach().double().cpu().numpy())

    def values(self, table: str, key: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clean, corrupt, patched) per prompt [n] float64 of one row."""
        clean, corrupt, patched = self._rows[table][tuple(key.items())]
        return np.concatenate(clean), np.concatenate(corrupt), np.concatenate(patched)

    def keys(self, table: str) -> list[dict]:
        return [dict(k) for k in self._rows.get(table, {})]

    def indices(self, distance: int, n: int) -> np.ndarray:
        """The resampling matrix [n_boot, n] of a prompt set (shared by all of its rows)."""
        if (distance, n) not in self._idx:
            self._idx[(distance, n)] = bootstrap.indices(n, self.n_boot, self.seed, int(distance))
        return self._idx[(distance, n)]

    def table(self, table: str) -> pd.DataFrame:
        """One row per key: the key's columns, ``prompts``, ``logit_diff`` (mean patched - clean)
        with ``ci_low`` / ``ci_high``, ``corrupt_logit_diff`` (mean corrupt - clean) with
        ``corrupt_ci_low`` / ``corrupt_ci_high``, ``fraction`` (their ratio), ``clean_logit``."""
        rows = []
        for key in self.keys(table):
            clean, corrupt, patched = self.values(table, key)
            idx = self.indices(key["distance"], len(clean))
            delta, full = patched - clean, corrupt - clean
            lo, hi = bootstrap.interval(bootstrap.resampled_means(delta, idx), self.level)
            flo, fhi = bootstrap.interval(bootstrap.resampled_means(full, idx), self.level)
            mean, whole = float(delta.mean()), float(full.mean())
            rows.append({**key, "prompts": len(clean), "logit_diff": mean, "ci_low": lo, "ci_high": hi,
                         "corrupt_logit_diff": whole, "corrupt_ci_low": flo, "corrupt_ci_high": fhi,
                         "fraction": mean / whole if whole else math.nan, "clean_logit": float(clean.mean())})
        return pd.DataFrame(rows)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: self.table(name) for name in self._rows}

    def wins(self, table: str, over: str, where: dict | None = None, lowest: bool = True,
             absolute: bool = False) -> dict:
        """Which value of column ``over`` has the lowest (highest) mean effect, averaged over
        distances, among the rows matching ``where``; and in what share of bootstrap resamples
        it does. Returns ``{"winner", "share" {candidate: share}, "mean" {candidate: mean},
        "ci" {candidate: [low, high]}}`` (the interval of the mean over distances)
        (candidates as strings: JSON keys). ``absolute``: rank by |mean| (highest wins)."""
        where = where or {}
        keys = [k for k in self.keys(table) if all(k.get(c) == v for c, v in where.items())]
        if not keys:
            raise KeyError(f"no rows of {table!r} match {where}")
        cands = sorted({k[over] for k in keys}, key=_order)
        distances = sorted({k["distance"] for k in keys})
        boot = np.zeros((len(cands), self.n_boot))
        means = np.zeros(len(cands))
        for d in distances:
            for i, c in enumerate(cands):
                (key,) = [k for k in keys if k["distance"] == d and k[over] == c]
                clean, _, patched = self.values(table, key)
                delta = patched - clean
                boot[i] += bootstrap.resampled_means(delta, self.indices(d, len(delta))) / len(distances)
                means[i] += delta.mean() / len(distances)
        ci = {str(c): list(bootstrap.interval(b, self.level)) for c, b in zip(cands, boot)}
        if absolute:
            boot, stat, lowest = np.abs(boot), np.abs(means), False
        else:
            stat = means
        winner = int(stat.argmin() if lowest else stat.argmax())
        share = bootstrap.win_share(boot, lowest)
        return {"winner": cands[winner], "share": {str(c): float(s) for c, s in zip(cands, share)},
                "mean": {str(c): float(m) for c, m in zip(cands, means)}, "ci": ci}


def _order(v):
    """Sort numbers numerically and labels as given (str of a number sorts as a number)."""
    return (0, v, "") if isinstance(v, (int, float, np.integer)) else (1, 0, str(v))
