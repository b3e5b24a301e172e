"""The report's figures (matplotlib, Agg, PNG), after the paper's Figs. 3, 5a, 8, 9 and 10.

Every function takes the MPPC tables (``{comparison: (forward, reverse)}``, see
:mod:`universality.report.page`) and writes one PNG. MPPC is a Pearson correlation: unitless, in
[-1, 1]; densities are per unit of MPPC.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from universality.report import page as report  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9,
                     "axes.spines.top": False, "axes.spines.right": False})
NULL_COLOUR = "0.55"


def label(name: str, c: dict) -> str:
    """``name: A -> B`` (with SAE seeds when they differ), or the comparison's own label."""
    if c.get("label"):
        return c["label"]
    a, b = sides(c)
    kind = " neurons" if c["kind"] == "neuron" else ""
    shift = f", B shifted {c['shift']:,} tokens" if c["shift"] else ""
    return f"{name}: {a} \u2192 {b}{kind}{shift}"


def sides(c: dict) -> tuple[str, str]:
    """Names of A and B for axis labels (with the SAE seed when both sides are one model)."""
    if c["kind"] == "sae" and (c["seed_a"] != c["seed_b"] or c["a"] == c["b"]):
        return f"{c['a']} SAE {c['seed_a']}", f"{c['b']} SAE {c['seed_b']}"
    return c["a"], c["b"]


def _panels(n: int, width: float = 5.6, height: float = 3.9):
    """A grid of ``n`` axes, two per row; unused cells hidden."""
    cols = min(2, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _headroom(ax, factor: float = 1.45) -> None:
    # room above the data for a legend in the upper corner
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * factor)


def colours(names: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {n: matplotlib.colors.to_hex(cmap(i % 10)) for i, n in enumerate(names)}


def _bins(values: list[np.ndarray], n: int = 50) -> np.ndarray:
    lo = min([0.0] + [float(v.min()) for v in values if len(v)])
    return np.linspace(np.floor(lo * 10) / 10, 1.0, n + 1)


def _save(fig, out: str) -> None:
    from universality.core.store import atomic_output

    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def distributions(tables: dict, plan: dict, comps: dict, out: str) -> None:
    """Fig. 3a: MPPC distribution (A -> B) of every comparison, the permutation null shaded."""
    fig, ax = plt.subplots(figsize=(9, 5))
    vals = {n: tables[n][0]["mppc"].dropna().to_numpy() for n in plan["main"] + plan["nulls"]}
    bins = _bins(list(vals.values()))
    col = colours(plan["main"])
    peak = 0.0
    for n in plan["main"]:
        h, _, _ = ax.hist(vals[n], bins=bins, density=True, histtype="step", lw=1.8, color=col[n],
                          label=f"{label(n, comps[n])} (mean {vals[n].mean():.2f})")
        peak = max(peak, h.max())
    top = 1.2 * peak if peak else None
    for n in plan["nulls"]:
        h, _, _ = ax.hist(vals[n], bins=bins, density=True, color=NULL_COLOUR, alpha=0.45, zorder=0,
                          label=f"null — {label(n, comps[n])} (mean {vals[n].mean():.2f})")
        if top and h.max() > top:
            # the null is a narrow spike near 0: clip it so the other curves stay readable
            ax.annotate(f"null peaks at density {h.max():.0f} (clipped)", xy=(vals[n].mean(), top),
                        xytext=(vals[n].mean() + 0.05, 0.92 * top), fontsize=8, color="0.3",
                        arrowprops={"arrowstyle": "->", "color": "0.4"})
    if top:
        ax.set_ylim(0, top)
    ax.axvline(report.HIGH, color="k", ls=":", lw=1, label=f"MPPC = {report.HIGH}")
    ax.set(xlabel="MPPC of a feature of A (max Pearson r over all features of all layers of B)",
           ylabel="density (per unit MPPC)", title="MPPC distributions, A → B")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    _save(fig, out)


def difference(panels: list[tuple[pd.DataFrame, dict]], comps: dict, out: str) -> None:
    """Figs. 3b and 11b: per-feature MPPC difference cross minus skyline, one panel per pair
    (``panels``: ``[(paired table, stats)]``, stats with ``cross`` and ``skyline``), one shared
    x range and bins so that the pairs read side by side; 5-95% interval and near-zero band."""
    fig, axes = _panels(len(panels), width=6.2, height=4.2)
    values = [diff["difference"].to_numpy() for diff, _ in panels]
    lo = min([-report.NEAR_ZERO] + [float(v.min()) for v in values if len(v)])
    hi = max([report.NEAR_ZERO] + [float(v.max()) for v in values if len(v)])
    bins = np.linspace(lo, hi, 61)
    for ax, d, (_, stats) in zip(axes, values, panels):
        ax.axvspan(-report.NEAR_ZERO, report.NEAR_ZERO, color="tab:green", alpha=0.15,
                   label=f"|difference| < {report.NEAR_ZERO}: {100 * stats['share_near_zero']:.1f}% of features")
        ax.hist(d, bins=bins, density=True, color="tab:blue", alpha=0.8, label=f"{stats['paired']:,} features of A")
        for q in ("p5", "p95"):
            ax.axvline(stats[q], color="k", ls="--", lw=1)
        ax.plot([], [], color="k", ls="--", lw=1,
                label=f"5th\u201395th percentile: [{stats['p5']:.2f}, {stats['p95']:.2f}]")
        ax.axvline(stats["mean"], color="tab:red", lw=1.2, label=f"mean {stats['mean']:+.3f}")
        cross, skyline = stats["cross"], stats["skyline"]
        ax.set(xlabel=f"MPPC({cross}) \u2212 MPPC({skyline}), same feature of {comps[cross]['a']}",
               ylabel="density (per unit MPPC)", title=f"{comps[cross]['a']} \u2192 {comps[cross]['b']} ({cross})")
        ax.set_xlim(lo, hi)
        _headroom(ax, 1.6)
        ax.legend(loc="upper left", frameon=False)
    fig.suptitle("Marginal effect of the architecture: cross-architecture minus model-seed MPPC")
    fig.tight_layout()
    _save(fig, out)


def _match_shares(table: pd.DataFrame, rows: list[int], cols: list[int]) -> np.ndarray:
    """[rows, cols] share of each row layer's features whose best match lies in each column layer."""
    valid = table[table["match_layer"] >= 0]
    counts = pd.crosstab(valid["layer"], valid["match_layer"]).reindex(index=rows, columns=cols, fill_value=0)
    totals = counts.sum(axis=1).to_numpy(dtype=float)[:, None]
    return np.divide(counts.to_numpy(dtype=float), totals, out=np.zeros(counts.shape), where=totals > 0)


def depth(tables: dict, plan: dict, comps: dict, layers: dict, out: str) -> None:
    """Figs. 3c and 10: layer of a feature vs layer of its best match, both directions, row-normalised."""
    names = plan["main"]
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    for row, n in zip(axes, names):
        c = comps[n]
        na, nb = sides(c)
        for ax, (table, src, dst) in zip(row, ((tables[n][0], na, nb), (tables[n][1], nb, na))):
            rl, cl = (layers[c["a"]], layers[c["b"]]) if src == na else (layers[c["b"]], layers[c["a"]])
            share = _match_shares(table, rl, cl)
            im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="lower")
            ax.set_xticks(range(len(cl)), cl)
            ax.set_yticks(range(len(rl)), rl)
            if share.size <= 64:
                for (i, j), v in np.ndenumerate(share):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="k" if v > 0.6 else "w")
            ax.set(xlabel=f"layer of best match in {dst}", ylabel=f"layer of feature in {src}",
                   title=f"{n}: {src} \u2192 {dst}")
            fig.colorbar(im, ax=ax, label="share of the row's features")
    fig.suptitle("Depth specialisation: where each feature's best match lies (rows sum to 1)")
    fig.tight_layout()
    _save(fig, out)


def layer_groups(tables: dict, plan: dict, comps: dict, layers: dict, groups: int, out: str) -> None:
    """Fig. 8: MPPC distribution (A -> B) by group of consecutive layers of A."""
    names = plan["main"]
    fig, axes = _panels(len(names))
    cmap = plt.get_cmap("plasma")
    for ax, n in zip(axes, names):
        forward = tables[n][0].dropna(subset=["mppc"])
        la = layers[comps[n]["a"]]
        parts = [p for p in np.array_split(np.asarray(la), min(groups, len(la))) if len(p)]
        bins = _bins([forward["mppc"].to_numpy()], 40)
        for i, part in enumerate(parts):
            v = forward.loc[forward["layer"].isin(part), "mppc"].to_numpy()
            name = f"layer {part[0]}" if len(part) == 1 else f"layers {part[0]}–{part[-1]}"
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.6, color=cmap(0.8 * i / max(len(parts) - 1, 1)),
                    label=f"{name} (n={len(v):,}, mean {v.mean():.2f})")
        a, b = sides(comps[n])
        ax.set(xlabel=f"MPPC ({a} → {b})", ylabel="density (per unit MPPC)", title=f"{n}: by layer of {a}")
        _headroom(ax)
        ax.legend(frameon=False, loc="upper left")
    fig.suptitle("MPPC by layer group of A")
    fig.tight_layout()
    _save(fig, out)


def forward_reverse(tables: dict, plan: dict, comps: dict, out: str) -> None:
    """Fig. 9: MPPC distribution in both directions, A -> B and B -> A."""
    names = plan["main"]
    fig, axes = _panels(len(names))
    for ax, n in zip(axes, names):
        a, b = sides(comps[n])
        f, r = (tables[n][i]["mppc"].dropna().to_numpy() for i in (0, 1))
        bins = _bins([f, r], 40)
        unit = "neurons" if comps[n]["kind"] == "neuron" else "features"
        ax.hist(f, bins=bins, density=True, histtype="step", lw=1.6, color="tab:blue",
                label=f"forward {a} → {b} ({len(f):,} {unit}, mean {f.mean():.2f})")
        ax.hist(r, bins=bins, density=True, histtype="step", lw=1.6, color="tab:orange", ls="--",
                label=f"reverse {b} → {a} ({len(r):,} {unit}, mean {r.mean():.2f})")
        ax.set(xlabel="MPPC", ylabel="density (per unit MPPC)", title=n)
        _headroom(ax)
        ax.legend(frameon=False, loc="upper left")
    fig.suptitle("Forward (A → B) vs reverse (B → A) MPPC")
    fig.tight_layout()
    _save(fig, out)


def _source(source: str) -> str:
    model, seed = source.split("/")
    return f"{model} SAE {seed}"


def complexity(joined: dict, stats: dict, comps: dict, top_k: int, out: str) -> None:
    """Fig. 5a without an LLM: MPPC vs the token-identity share and vs distinct top-k tokens.

    ``joined``: ``{(source, comparison): table}`` from :func:`report.complexity_join`.
    """
    sources = sorted({s for s, _ in joined})
    fig, axes = plt.subplots(len(sources), 2, figsize=(11, 4.2 * len(sources)), squeeze=False)
    col = colours(sorted({n for _, n in joined}, key=list(comps).index))
    for (ax_share, ax_top), source in zip(axes, sources):
        for (s, n), t in joined.items():
            if s != source:
                continue
            st = stats[s][n]
            # decile bins of the share: the median and quartiles of MPPC in each
            edges = np.unique(np.quantile(t["token_share"], np.linspace(0, 1, 11)))
            which = np.clip(np.searchsorted(edges, t["token_share"], side="right") - 1, 0, len(edges) - 2)
            g = t.groupby(which)
            x = g["token_share"].median()
            q = g["mppc"].quantile([0.25, 0.5, 0.75]).unstack()
            ax_share.scatter(t["token_share"], t["mppc"], s=3, alpha=0.12, color=col[n], rasterized=True)
            ax_share.plot(x, q[0.5], "-o", ms=3, color=col[n],
                          label=f"{n} (Spearman \u03c1 = {st['token_share']['spearman']:+.2f})")
            ax_share.fill_between(x, q[0.25], q[0.75], color=col[n], alpha=0.2)
            m = t.groupby("distinct_top")["mppc"].agg(["mean", "sem", "size"])
            ax_top.errorbar(m.index, m["mean"], yerr=m["sem"].fillna(0), fmt="-o", ms=3, capsize=2, color=col[n],
                            label=f"{n} (Spearman \u03c1 = {st['distinct_top']['spearman']:+.2f})")
        ax_share.set(xlabel="share of activation variance explained by the current token (\u03b7\u00b2)",
                     ylabel="MPPC", title=f"features of {_source(source)}: MPPC vs token-boundness\n(median and interquartile range per decile)")
        ax_top.set(xlabel=f"distinct current tokens among the top {top_k} activations",
                   ylabel="mean MPPC (\u00b1 s.e.m.)", title=f"features of {_source(source)}: MPPC vs top-activation diversity\n ")
        ax_top.set_xticks(range(1, top_k + 1))
        for ax in (ax_share, ax_top):
            ax.legend(frameon=False, loc="best" if ax is ax_top else "upper left")
    fig.tight_layout()
    _save(fig, out)
