"""The SAE section of the report: quality per SAE, and the SAE-invariance sweep (paper Sec. 4.3.2).

Quality comes from each SAE's ``metrics.json`` (:func:`universality.sae.evaluate.evaluate` on the
held-out eval rows, plus CE-loss recovered from the SAE stage): explained variance, mean L0
(active features per token), dead share (never fires on the eval rows), dense share (fires on
more than ``dense_threshold`` of them), CE-loss recovered. The sweep reads one MPPC table per
variant (the base SAE's features -> the variant's, one layer pair; :mod:`universality.compare.mppc`
format) and the null's (the same with the variant's tokens rolled): the paper's innermost
"SAE variables" circle, whose MPPC should be high if SAE training adds little randomness.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from universality.report import page as report

__all__ = ["QUALITY_KEYS", "quality_row", "sweep_rows", "summarize_sae", "sweep_figure"]

#: metrics.json keys shown per SAE (see the module docstring for their meaning).
QUALITY_KEYS = ("explained_variance", "mean_l0", "dead_fraction", "dense_fraction", "ce_loss_recovered")


def quality_row(metrics_path: str | Path, **ident) -> dict:
    """One SAE's quality: ``ident`` (model, layer, seed or variant) + :data:`QUALITY_KEYS` + d_sae."""
    m = json.loads(Path(metrics_path).read_text())
    row = dict(ident)
    for key in QUALITY_KEYS:
        value = m.get(key)
        row[key] = None if value is None else float(value)
    row["d_sae"] = int(m["d_sae"])
    row["train_tokens"] = int(m["training"]["tokens"])
    return row


def _changes_text(changes: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in changes.items())


def sweep_rows(sweep: dict, entries: dict, tables: dict, variant_quality: dict) -> list[dict]:
    """One row per sweep entry (variants, then the null): its changes, the MPPC distribution of
    the base SAE's features in the variant (forward) and of the variant's in the base (reverse),
    and the variant's quality. ``tables``: ``{entry: (forward, reverse)}`` DataFrames."""
    rows = []
    for entry, e in entries.items():
        fwd, rev = tables[entry]
        changes = sweep["variants"][e["variant"]]
        rows.append({
            "entry": entry, "variant": e["variant"], "shift": int(e["shift"]), "is_null": e["shift"] > 0,
            "changes": _changes_text(changes),
            "forward": report.distribution(fwd["mppc"]), "reverse": report.distribution(rev["mppc"]),
            "quality": variant_quality[e["variant"]],
        })
    return rows


def summarize_sae(quality: list[dict], sweep: dict | None, rows: list[dict]) -> dict:
    """The report's ``sae.json``: ``{"quality": [...], "sweep": None | {...}}``. The sweep block
    has the base SAE, the rows and the null's mean and p99 (chance level) when there is a null."""
    out = {"quality": quality, "quality_keys": list(QUALITY_KEYS), "sweep": None}
    if sweep is None:
        return out
    nulls = [r for r in rows if r["is_null"]]
    base = [q for q in quality if (q["model"], q["layer"], q["seed"])
            == (sweep["model"], sweep["layer"], sweep["base_seed"])]
    out["sweep"] = {"model": sweep["model"], "layer": sweep["layer"], "base_seed": sweep["base_seed"],
                    "base_quality": base[0] if base else None, "rows": rows,
                    "null": nulls[0] if nulls else None, "high": report.HIGH}
    return out


def sweep_figure(summary: dict, out: str) -> None:
    """Mean MPPC per variant, forward (base -> variant) and reverse, with the null beside them."""
    from universality.report import figures

    rows = summary["sweep"]["rows"]
    fig, ax = figures.plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.8))
    x = np.arange(len(rows))
    for k, (direction, offset, colour) in enumerate((("forward", -0.2, "#3b6ea5"), ("reverse", 0.2, "#e08a2c"))):
        means = [r[direction]["mean"] for r in rows]
        colours = [figures.NULL_COLOUR if r["is_null"] else colour for r in rows]
        ax.bar(x + offset, means, width=0.38, color=colours, edgecolor="black", linewidth=0.4,
               hatch=None if k == 0 else "//",
               label="base \u2192 variant" if k == 0 else "variant \u2192 base")
    ax.set_xticks(x, [r["entry"] + (f"\n(shift {r['shift']:,})" if r["is_null"] else "") for r in rows],
                  rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean MPPC")
    s = summary["sweep"]
    ax.set_title(f"SAE variables: variants of {s['model']} L{s['layer']} SAE {s['base_seed']} (grey: null)")
    ax.legend(loc="lower right")
    figures._save(fig, out)
