"""The judge's figures: MPPC by complexity score (Fig. 5a) and by monosemanticity score (Fig. 5b).

Boxes: MPPC quartiles of the scored features per integer score (the judge's argmax), whiskers
1.5 IQR, n above each box. MPPC is a Pearson correlation (unitless).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universality.report.figures import _save, plt
from universality.report.judge.scores import LOW_MPPC
from universality.report.judge.summary import with_mppc

ROLE_TITLES = {"sae_seed": "SAE seed variant", "model_seed": "model seed variant", "cross_arch": "architecture variant",
               "control": "untrained control", "other": "comparison"}


def _boxes(ax, table: pd.DataFrame, score: str, mppc: pd.Series, share_low: bool = False) -> None:
    groups = [mppc[(table[f"{score}_argmax"] == k) & mppc.notna()].to_numpy() for k in range(1, 6)]
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=range(1, 6), widths=0.55,
               showfliers=True, flierprops={"markersize": 2})
    for k, g in enumerate(groups, 1):
        text = f"n={len(g)}"
        if share_low and len(g):
            text += f"\n{100 * (g < LOW_MPPC).mean():.0f}% < {LOW_MPPC}"
        ax.text(k, 1.02, text, ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xticks(range(1, 6))
    ax.set_ylim(min(-0.05, float(np.nanmin(mppc)) - 0.05) if mppc.notna().any() else -0.05, 1.02)


def complexity_figure(table: pd.DataFrame, forwards: dict, roles: dict, proxy: pd.DataFrame | None,
                      judge: str, out: str) -> None:
    """Fig. 5a: one panel per comparison (SAE seed, model seed, cross-arch order), then the judge
    against the objective proxy (token share) on the same features."""
    order = sorted(forwards, key=lambda n: list(ROLE_TITLES).index(roles[n]))
    n = len(order) + (proxy is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.9), squeeze=False)
    for ax, name in zip(axes[0], order):
        _boxes(ax, table, "complexity", with_mppc(table, forwards[name]))
        ax.set(xlabel="complexity score (1 simple \u2013 5 complex)", ylabel="MPPC")
        ax.set_title(f"{ROLE_TITLES[roles[name]]}\n({name})", pad=20)  # room for the n labels
    if proxy is not None:
        ax = axes[0][-1]
        p = table[["layer", "feature"]].merge(proxy, on=["layer", "feature"], how="left")
        ax.scatter(table["complexity"], p["token_share"], s=10, alpha=0.6)
        ax.set(xlabel="judge's expected complexity score", ylabel="proxy: token share \u03b7\u00b2",
               title="judge vs objective proxy\n(same features)")
    fig.suptitle(f"MPPC by auto-labelled complexity score (judge: {judge})", fontsize=10, y=1.06)
    fig.tight_layout()
    _save(fig, out)


def monosemanticity_figure(table: pd.DataFrame, forward: pd.DataFrame, name: str, judge: str, out: str) -> None:
    """Fig. 5b: MPPC in ``name`` by monosemanticity score, the share below 0.2 above each box."""
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    mppc = with_mppc(table, forward)
    _boxes(ax, table, "monosemanticity", mppc, share_low=True)
    ax.axhline(LOW_MPPC, color="tab:red", ls=":", lw=1, label=f"MPPC = {LOW_MPPC}")
    ax.set(xlabel="monosemanticity score (1 no pattern \u2013 5 clear)", ylabel=f"MPPC ({name})")
    ax.set_title(f"MPPC by monosemanticity score (judge: {judge})", fontsize=10, pad=28)
    ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    _save(fig, out)
