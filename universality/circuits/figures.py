"""Figures of the induction-circuit tables (``universality.circuits.induction``), matplotlib, PNG.

Every heat map shows the paper's metric: the mean change of the clean answer B's logit at the last
position when the named component takes its value from the corrupted run (patched - clean, in
logits; blue = the component carries evidence for B). Numbers are printed in the cells.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from universality.circuits.induction import POSITIONS  # noqa: E402

__all__ = ["mamba_state", "mamba_offbyone", "rwkv_state", "rwkv_kv_in", "WKV_FIGURES", "mamba_ioi", "neox_heads", "head_paths", "induction_circuits",
           "MAMBA_FIGURES", "NEOX_FIGURES"]

#: Figure file stems written per model (``circuits/{model}/{stem}.png``).
MAMBA_FIGURES = ("state_patching", "off_by_one", "ioi")
NEOX_FIGURES = ("heads", "head_paths")
WKV_FIGURES = ("wkv_state", "wkv_kv_in")
DELTA = "Δ logit of B (patched − clean)"
A_, B_ = "A'", "B'"   # the two corruptions: [A'][B]...[A] and [A][B']...[A]


def _heatmap(ax, data: np.ndarray, rows, cols, title, xlabel, ylabel, fmt="{:.2f}", vmax=None,
             cmap="RdBu", label=DELTA, centred=True):
    vmax = vmax or float(np.nanmax(np.abs(data))) or 1.0
    vmin = -vmax if centred else 0.0
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            dark = abs(v) > 0.6 * vmax if centred else v > 0.6 * vmax
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.figure.colorbar(im, ax=ax, shrink=0.85, label=label)


def mamba_state(state: pd.DataFrame, model: str, path) -> None:
    """Heat map layer x distance (the paper's Table 1 transposed): layer l's SSM state at the final
    [A] patched from [A][B']...[A], other layers' states frozen clean."""
    _layer_distance(state, f"{model}: SSM state h at the final [A] from [A][B']…[A],\nother layers' states frozen "
                    "clean (paper Table 1)", path)


def rwkv_state(state: pd.DataFrame, model: str, path) -> None:
    """Heat map layer x distance: layer l's WKV state read at the final [A] patched from
    [A][B']...[A], other layers' states frozen clean (``wkv_paths`` ``state``)."""
    _layer_distance(state, f"{model}: WKV state (num, den, max) read at the final [A] from [A][B']…[A],\n"
                    "other layers' states frozen clean (Table 1's definition, carried to RWKV)", path)


def rwkv_kv_in(kv_in: pd.DataFrame, key: int, model: str, path) -> None:
    """Position x distance at the key layer: k and v together at one position, into the WKV state
    only, one panel per corruption; a third panel splits k and v (B', mean over distances)."""
    part = kv_in[(kv_in.layer == key)]
    order = [p for p in POSITIONS if p in set(part.position)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for ax, corr in zip(axes, (B_, A_)):
        sub = part[(part.corruption == corr) & (part.patched == "kv")]
        t = sub.pivot_table(index="position", columns="distance", values="logit_diff").loc[order]
        prompt = "[A][B']…[A]" if corr == B_ else "[A'][B]…[A]"
        _heatmap(ax, t.to_numpy(), order, t.columns, f"{model}: k and v at one position of L{key},\n"
                 f"into the WKV state only, from {prompt}", "distance A1→A2 (tokens)", "patched position")
    sub = part[part.corruption == B_].pivot_table(index="position", columns="patched", values="logit_diff")
    sub = sub.loc[order, ["kv", "k", "v"]]
    _heatmap(axes[2], sub.to_numpy(), order, sub.columns, f"k / v alone at L{key}, [A][B']…[A]\n(mean over distances)",
             "patched", "patched position")
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def _layer_distance(state: pd.DataFrame, title: str, path) -> None:
    """Layer x distance heat map of a state table's B' rows, with the full corruption per distance."""
    state = state[state.corruption == B_]
    pivot = state.pivot_table(index="layer", columns="distance", values="logit_diff")
    full = state.groupby("distance")["corrupt_logit_diff"].first()
    fig, ax = plt.subplots(figsize=(0.9 * pivot.shape[1] + 4, 0.32 * pivot.shape[0] + 2.4))
    _heatmap(ax, pivot.to_numpy(), [f"L{l}" for l in pivot.index],
             [f"{d}\n(full {full[d]:+.2f})" for d in pivot.columns], title, "distance A1→A2 (tokens)", "layer")
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def mamba_offbyone(ssm_in: pd.DataFrame, conv_in: pd.DataFrame, key: int, model: str, path) -> None:
    """Left: c (SSM input, into the state only) per layer and position, [A][B']…[A], mean over
    distances (paper Table 2 is the key layer's row). Right: x (conv input, into c at B1+1) at the
    key layer under both corruptions (Tables 3, 4)."""
    ssm_in = ssm_in[ssm_in.corruption == B_]
    order = [p for p in POSITIONS if p in set(ssm_in.position)]
    c = ssm_in.pivot_table(index="layer", columns="position", values="logit_diff")[order]
    x = conv_in.pivot_table(index="corruption", columns="position", values="logit_diff")
    x = x[[p for p in order if p in x.columns]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.32 * len(c) + 3.0),
                                 gridspec_kw={"width_ratios": [1.2, 1]})
    _heatmap(a1, c.to_numpy(), c.index, order,
             f"{model}: SSM input c at one position, into h only\n([A][B']…[A], mean over distances)",
             "position of the patched c", "layer")
    a1.axhline(key - 0.5, color="k", lw=0.8)
    a1.axhline(key + 0.5, color="k", lw=0.8)
    rows = ["[A][B']…[A]" if r == B_ else "[A'][B]…[A]" for r in x.index]
    _heatmap(a2, x.to_numpy(), rows, x.columns,
             f"conv input x at key layer {key}, into c at B1+1\n(mean over distances)",
             "position of the patched x", "corrupted prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def mamba_ioi(table: pd.DataFrame, model: str, path, example: str = "") -> None:
    """Paper Fig. 13: layer x position; each cell split, left the change of logit(IO), right of
    logit(S), when c at that (layer, position) takes its [IO']…[S']…[S']… value."""
    parts = [table[table.metric == m].pivot_table(index="layer", columns="position", values="logit_diff")
             for m in ("io", "s")]
    labels = dict(zip(table.position, table.token))
    cols = parts[0].columns
    data = np.stack([parts[0].to_numpy(), parts[1].to_numpy()], axis=-1).reshape(len(parts[0]), -1)
    vmax = float(np.nanmax(np.abs(data))) or 1.0
    fig, ax = plt.subplots(figsize=(max(9, 0.75 * len(cols) + 3), 0.32 * len(parts[0]) + 3))
    im = ax.imshow(data, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks([2 * j + 0.5 for j in range(len(cols))], [labels[p] for p in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(parts[0])), [f"L{l}" for l in parts[0].index])
    for j in range(1, len(cols)):
        ax.axvline(2 * j - 0.5, color="k", lw=0.6)
    ax.set_xlabel("position of the patched c (each cell: left Δ logit IO, right Δ logit S)")
    ax.set_ylabel("layer")
    kind = "templated sentences" if bool(table.get("templated", pd.Series([False])).iloc[0]) else \
        "random-token frame (fallback)"
    ax.set_title(f"{model}: IOI, c patched from [IO']…[S']…[S']… (other layers' states frozen; {kind})\n"
                 + (f"e.g. {example!r}" if example else ""), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.85, label="Δ logit (patched − clean)")
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def neox_heads(scores: pd.DataFrame, patching: pd.DataFrame, model: str, path) -> None:
    """Attention scores and head patching per (layer, head)."""
    prev = scores.pivot(index="layer", columns="head", values="prev_token")
    ind = scores.pivot(index="layer", columns="head", values="induction")
    eff = {c: patching[patching.corruption == c].pivot_table(index="layer", columns="head", values="logit_diff")
           for c in ("B'", "A'")}
    vmax = max(float(np.abs(e.to_numpy()).max()) for e in eff.values()) or 1.0
    fig, axes = plt.subplots(2, 2, figsize=(11, 2 * (0.5 * len(prev) + 2.6)))
    axes = axes.ravel()
    _heatmap(axes[0], prev.to_numpy(), prev.index, prev.columns, f"{model}: previous-token score\n"
             "mean attention q → q−1 on [BOS] R R", "head", "layer", vmax=1.0, cmap="Greens",
             label="attention weight", centred=False)
    _heatmap(axes[1], ind.to_numpy(), ind.index, ind.columns, "induction score\n"
             "mean attention q → q−|R|+1 (2nd copy)", "head", "layer", vmax=1.0, cmap="Greens",
             label="attention weight", centred=False)
    for ax, (c, e) in zip(axes[2:], eff.items()):
        prompt = "[A][B']…[A]" if c == "B'" else "[A'][B]…[A]"
        _heatmap(ax, e.to_numpy(), e.index, e.columns, f"patch head output z from {prompt}\n"
                 "(all positions, mean over distances)", "head", "layer", vmax=vmax)
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def head_paths(paths: pd.DataFrame, model: str, path) -> None:
    """Sender head x (receiver head, input) path patching, one panel per corruption (mean over
    distances). An empty table gives a figure that says so."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * max(1, paths[["sender_layer", "sender_head"]]
                                                         .drop_duplicates().shape[0]) + 3))
    for ax, c in zip(axes, ("A'", "B'")):
        sub = paths[paths.corruption == c]
        if sub.empty:
            ax.axis("off")
            ax.set_title(f"{c}: no receivers", fontsize=10)
            continue
        sub = sub.assign(sender=[f"L{l}H{h}" for l, h in zip(sub.sender_layer, sub.sender_head)],
                         receiver=[f"L{l}H{h} {i}" for l, h, i in zip(sub.receiver_layer, sub.receiver_head, sub.input)])
        t = sub.pivot_table(index="sender", columns="receiver", values="logit_diff", sort=False)
        prompt = "[A'][B]…[A]" if c == "A'" else "[A][B']…[A]"
        _heatmap(ax, t.to_numpy(), t.index, t.columns, f"{model}: sender head → receiver q/k/v, from {prompt}\n"
                 "(direct path, the rest frozen; mean over distances)", "receiver head and input", "sender head")
        ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def _token(ax, x, y, text, color="#eeeeee"):
    ax.add_patch(FancyBboxPatch((x - 0.32, y - 0.22), 0.64, 0.44, boxstyle="round,pad=0.02",
                                fc=color, ec="k", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=9)


def _arrow(ax, p, q, text="", color="k", rad=0.0, offset=(0, 0.15)):
    ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=12, lw=1.4, color=color,
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        mx, my = (p[0] + q[0]) / 2 + offset[0], (p[1] + q[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=8, color=color)


def induction_circuits(mamba: dict | None, neox: dict | None, path) -> None:
    """Fig. 7 of the paper from our numbers: (a) the Mamba circuit, (b) the Transformer circuit.

    ``mamba`` / ``neox`` are per-model summaries (``summarise_mamba`` / ``summarise_neox`` plus
    ``model``); either may be None (that panel then says so).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    xs = {"A1": 0, "B1": 1, "B1+1": 2, "…": 3.2, "A2": 4.4}
    for ax in axes:
        ax.set_xlim(-0.8, 5.6)
        ax.set_ylim(-0.7, 3.4)
        ax.axis("off")
        for label, x in xs.items():
            _token(ax, x, 0, {"A1": "[A]", "B1": "[B]", "B1+1": "[·]", "…": "…", "A2": "[A]"}[label])
            if label != "…":
                ax.text(x, -0.45, label, ha="center", fontsize=8, color="0.35")
        _token(ax, 5.1, 2.9, "B", color="#c9e7c9")
    ax = axes[0]
    if mamba:
        k = mamba["key_layer"]
        peak = mamba["ssm_in_peak_position"]
        cdiff = mamba["ssm_in_logit_diff_by_position"]
        xd = mamba["conv_in_logit_diff_by_position"]
        px = xs.get(peak, 2)
        ax.set_title(f"(a) {mamba['model']}: induction through the SSM state of layer {k}", fontsize=10)
        _token(ax, px, 1.3, f"c (L{k})", color="#f6d6a8")
        _arrow(ax, (xs["A1"], 0.25), (px - 0.1, 1.08), f"x[A1] Δ{xd.get(A_, {}).get('A1', 0):+.2f} (A')",
               color="#8a4b00", rad=-0.2, offset=(-0.6, 0))
        _arrow(ax, (xs["B1"], 0.25), (px, 1.08), f"x[B1] Δ{xd.get(B_, {}).get('B1', 0):+.2f} (B')",
               color="#8a4b00", rad=-0.1, offset=(0.1, -0.1))
        ax.text(px - 0.45, 1.3, f"conv → c at {peak}: Δ{cdiff[peak]:+.2f}\n(c at B1: Δ{cdiff.get('B1', 0):+.2f})",
                ha="right", va="center", fontsize=8)
        ax.plot([px, xs["A2"]], [2.2, 2.2], color="#1f5fa8", lw=3)
        ax.text((px + xs["A2"]) / 2, 2.3, f"SSM state h (layer {k}), Δ{mamba['state_logit_diff_by_layer'][str(k)]:+.2f}",
                ha="center", fontsize=8, color="#1f5fa8")
        _arrow(ax, (px, 1.52), (px, 2.15), color="#1f5fa8")
        _arrow(ax, (xs["A2"], 0.25), (xs["A2"], 2.15), "query", color="#1f5fa8", offset=(0.3, 0))
        _arrow(ax, (xs["A2"], 2.25), (4.85, 2.8), color="#1f5fa8")
        ax.text(-0.7, 3.15, f"full corruption [A][B']…[A]: Δ{mamba['corrupt_logit_diff']:+.2f}",
                fontsize=8, color="0.3")
    else:
        ax.set_title("(a) no Mamba model analysed", fontsize=10)
    ax = axes[1]
    if neox:
        p, i = neox["previous_token_head"], neox["induction_head"]
        ax.set_title(f"(b) {neox['model']}: previous-token head + induction head", fontsize=10)
        _arrow(ax, (xs["B1"], 0.25), (xs["A1"] + 0.1, 0.25), color="#8a4b00", rad=0.9)
        ax.text(0.5, 0.95, f"{p['name']} prev-token\nscore {p['prev_token_score']:.2f}, "
                f"patch Δ{p['logit_diff'].get(A_, 0):+.2f} (A')", ha="center", fontsize=8,
                color="#8a4b00")
        _arrow(ax, (xs["A2"], 0.25), (xs["B1"] + 0.1, 0.3), color="#1f5fa8", rad=0.35)
        ax.text(2.7, 1.75, f"{i['name']} induction: attends A2 → B1\nscore {i['induction_score']:.2f}, "
                f"patch Δ{i['logit_diff'].get(B_, 0):+.2f} (B')", ha="center", fontsize=8,
                color="#1f5fa8")
        _arrow(ax, (xs["A2"], 0.25), (4.85, 2.8), "copies B (OV)", color="#1f5fa8", offset=(0.35, 0))
    else:
        ax.set_title("(b) no GPT-NeoX model analysed", fontsize=10)
    fig.text(0.5, 0.01, "Δ = mean change of B's logit at A2 when the component takes its corrupted value "
             "(patched − clean); prompts [A][B]…[A] at all distances", ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)
