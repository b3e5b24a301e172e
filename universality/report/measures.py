"""The report's section on the measures beside MPPC: one row per comparison with a column per
measure, and the depth maps (PNG).

Inputs are the measure files of the compare stage: ``measures/depth/{c}.json``
(:mod:`universality.compare.depth`), ``measures/matching/{c}.json``
(:mod:`universality.compare.matching`), ``measures/cka/{c}.csv`` and
``measures/svcca_rsa/{c}.csv`` (:mod:`universality.compare.layer_maps`), and the forward MPPC
tables (the paper's convention for dead features: scored 0 instead of excluded).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from universality.report.figures import _save, colours, label  # noqa: E402

#: The figures of this section (report/figures/{name}.png) and their titles.
MEASURE_FIGURES = {
    "similarity_maps": "Depth maps of the measures beside MPPC: one-to-one matches, CKA, SVCCA, RSA",
    "matching_shares": "One-to-one matched share vs MPPC's many-to-one share, per threshold",
}


def dead_as_zero(mppc: pd.Series) -> dict:
    """Mean MPPC with excluded (dead / constant) features left out (ours) and scored 0 (the paper's)."""
    m = mppc.to_numpy(dtype=np.float64)
    return {"excluded_out": float(np.nanmean(m)) if np.isfinite(m).any() else float("nan"),
            "dead_as_zero": float(np.nan_to_num(m, nan=0.0).mean()) if len(m) else float("nan")}


def _best(table: pd.DataFrame, col: str, p_col: str) -> dict | None:
    t = table.dropna(subset=[col])
    if not len(t):
        return None
    diag = t[col].mean()
    row = t.loc[t[col].idxmax()]
    return {"mean": float(diag), "max": float(row[col]), "at": [int(row["la"]), int(row["lb"])],
            "p_at_max": float(row[p_col]), "significant_pairs": int((t[p_col] <= 0.05).sum()), "pairs": int(len(t))}


def summarize(comparisons: dict, depth: dict, matching: dict, cka: dict, svcca_rsa: dict,
              forward: dict) -> dict:
    """``{comparison: {...}}`` with keys ``depth`` (both directions' Spearman rho, slope,
    near-diagonal share and its chance, App. C rows), ``matching`` (one-to-one shares per
    threshold, MPPC's, mutual best, many-to-one), ``cka`` / ``svcca`` / ``rsa`` (mean, max,
    where, p-value; None where not computed) and ``mppc_dead_zero``."""
    out = {}
    for name, c in comparisons.items():
        row = {"kind": c["kind"], "a": c["a"], "b": c["b"], "is_null": c["shift"] > 0,
               "mppc": dead_as_zero(forward[name]["mppc"])}
        d = depth.get(name)
        row["depth"] = {k: d[k] for k in ("forward", "reverse")} if d else None
        m = matching.get(name)
        row["matching"] = ({k: m[k] for k in ("share_matched", "share_matched_of_b", "mppc_share_above",
                                               "mutual_best", "many_to_one", "matched", "mean_r_matched",
                                               "candidate_edges", "per_pair")} if m else None)
        row["cka"] = _best(cka[name], "cka", "p_value") if name in cka else None
        s = svcca_rsa.get(name)
        row["svcca"] = _best(s, "svcca", "svcca_p") if s is not None else None
        row["rsa"] = _best(s, "rsa", "rsa_p") if s is not None else None
        out[name] = row
    return out


def _heat(ax, grid: np.ndarray, rows, cols, title: str, xlabel: str, ylabel: str, vmin=0.0, vmax=1.0, notes=None):
    im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    if grid.size <= 96:
        for (i, j), v in np.ndenumerate(grid):
            text = "\u2014" if v != v else f"{v:.2f}" + (notes[i][j] if notes else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="k" if v > 0.6 else "w")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return im


def _grid(table: pd.DataFrame, col: str, rows, cols) -> np.ndarray:
    return table.pivot(index="la", columns="lb", values=col).reindex(index=rows, columns=cols).to_numpy(float)


def _stars(table: pd.DataFrame, p_col: str, rows, cols) -> list[list[str]]:
    p = _grid(table, p_col, rows, cols)
    return [["*" if v <= 0.05 else "" for v in r] for r in p]


def similarity_maps(summary: dict, cka: dict, svcca_rsa: dict, comparisons: dict, layers: dict,
                    threshold: float, out: str) -> None:
    """Per main SAE comparison, layer of A x layer of B: share of A's layer matched one-to-one
    within B's layer with r > ``threshold``, CKA of the residual streams, SVCCA and RSA of the
    matched features (* = permutation p <= 0.05)."""
    names = [n for n, r in summary.items() if not r["is_null"] and r["kind"] == "sae"]
    fig, axes = plt.subplots(max(len(names), 1), 4, figsize=(17, 3.3 * max(len(names), 1)), squeeze=False)
    for row_axes, n in zip(axes, names):
        c = comparisons[n]
        rows, cols = layers[c["a"]], layers[c["b"]]
        xl, yl = f"layer of {c['b']}", f"layer of {c['a']}"
        per = (summary[n]["matching"] or {}).get("per_pair", {})
        share = np.array([[per.get(f"{la},{lb}", {}).get(str(threshold), np.nan) for lb in cols] for la in rows])
        _heat(row_axes[0], share, rows, cols, f"{n}: one-to-one, r > {threshold}", xl, yl)
        panels = ((cka.get(n), "cka", "p_value", "CKA (residual stream)"),
                  (svcca_rsa.get(n), "svcca", "svcca_p", "SVCCA (matched features)"),
                  (svcca_rsa.get(n), "rsa", "rsa_p", "RSA (matched features)"))
        for ax, (t, col, p_col, title) in zip(row_axes[1:], panels):
            if t is None or not len(t):
                ax.set_visible(False)
                continue
            _heat(ax, _grid(t, col, rows, cols), rows, cols, f"{n}: {title}", xl, yl,
                  vmin=min(0.0, float(t[col].min())), notes=_stars(t, p_col, rows, cols))
    fig.suptitle("Depth maps beside MPPC (* = permutation p \u2264 0.05)")
    fig.tight_layout()
    _save(fig, out)


def matching_shares(summary: dict, comparisons: dict, thresholds, out: str) -> None:
    """Bars per comparison: share of A's features matched one-to-one with r > t (solid) and with
    MPPC > t (hatched, many-to-one allowed), for every threshold t."""
    names = [n for n, r in summary.items() if r["matching"]]
    fig, axes = plt.subplots(1, len(thresholds), figsize=(4.6 * len(thresholds), 4.4), squeeze=False)
    col = colours(names)
    x = np.arange(len(names))
    for ax, t in zip(axes[0], thresholds):
        one = [summary[n]["matching"]["share_matched"][str(t)] for n in names]
        many = [summary[n]["matching"]["mppc_share_above"][str(t)] for n in names]
        ax.bar(x - 0.2, one, 0.4, color=[col[n] for n in names], label="one-to-one")
        ax.bar(x + 0.2, many, 0.4, color=[col[n] for n in names], alpha=0.35, hatch="//", label="MPPC (many-to-one)")
        ax.set_xticks(x, [label(n, comparisons[n]).split(":")[0] for n in names], rotation=40, ha="right")
        ax.set(ylim=(0, 1), ylabel="share of A's compared features", title=f"r > {t}")
        ax.legend(frameon=False, loc="upper right")
    fig.suptitle("Features matched one-to-one vs by MPPC")
    fig.tight_layout()
    _save(fig, out)
