"""The universality report: numbers recomputed from the MPPC tables, and the HTML page.

Inputs are the MPPC tables (``mppc/{comparison}.csv.gz`` A->B and ``.reverse.csv.gz`` B->A: one
row per feature, ``layer, feature, mppc, match_layer, match_feature``; excluded features have NaN
mppc), the complexity tables (:mod:`universality.report.complexity`) and the feature-pair cards
(:mod:`universality.report.cards`). The roles of the comparisons come from
:func:`universality.workflow.config.report_plan`. The page is one self-contained HTML file whose images are
relative paths next to it, so it opens from the file system with no server.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

#: MPPC above which a feature counts as matched (the paper's "> 0.95").
HIGH = 0.95
#: |cross - skyline| below which a feature's MPPC counts as unchanged by the architecture.
NEAR_ZERO = 0.05
#: Percentile of the permutation null's MPPC used as the chance threshold.
NULL_PERCENTILE = 99


def read_table(path: str) -> pd.DataFrame:
    """An MPPC table; raises naming the file when columns are missing."""
    table = pd.read_csv(path)
    missing = {"layer", "feature", "mppc", "match_layer", "match_feature"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not an MPPC table, missing columns {sorted(missing)}")
    return table


def distribution(mppc: pd.Series) -> dict:
    """Counts, mean, median and share above :data:`HIGH` of one direction's MPPC values."""
    valid = mppc.dropna().to_numpy(dtype=np.float64)
    n = len(valid)
    return {
        "features": int(len(mppc)), "compared": n, "excluded": int(len(mppc) - n),
        "mean": float(valid.mean()) if n else float("nan"),
        "median": float(np.median(valid)) if n else float("nan"),
        "share_above_high": float((valid > HIGH).mean()) if n else float("nan"),
    }


def chance_level(null_mppc: pd.Series) -> dict:
    """Mean and :data:`NULL_PERCENTILE`-th percentile of a permutation null's MPPC."""
    valid = null_mppc.dropna().to_numpy(dtype=np.float64)
    if not len(valid):
        return {"mean": float("nan"), "p99": float("nan")}
    return {"mean": float(valid.mean()), "p99": float(np.percentile(valid, NULL_PERCENTILE))}


def paired_difference(cross: pd.DataFrame, skyline: pd.DataFrame) -> pd.DataFrame:
    """Per feature of A: MPPC in ``cross`` minus MPPC in ``skyline`` (features valid in both)."""
    both = cross[["layer", "feature", "mppc"]].merge(
        skyline[["layer", "feature", "mppc"]], on=["layer", "feature"], suffixes=("_cross", "_skyline"),
        validate="one_to_one")
    both = both.dropna(subset=["mppc_cross", "mppc_skyline"])
    return both.assign(difference=both["mppc_cross"] - both["mppc_skyline"])


def difference_stats(diff: pd.Series) -> dict:
    """Mean, 5th-95th percentile interval and share with |difference| < :data:`NEAR_ZERO`."""
    d = diff.to_numpy(dtype=np.float64)
    if not len(d):
        return {"paired": 0, **{k: float("nan") for k in ("mean", "p5", "p95", "share_near_zero")}}
    return {"paired": int(len(d)), "mean": float(d.mean()), "p5": float(np.percentile(d, 5)),
            "p95": float(np.percentile(d, 95)), "share_near_zero": float((np.abs(d) < NEAR_ZERO).mean())}


def read_complexity(path: str) -> pd.DataFrame:
    """A complexity table (:func:`universality.report.complexity.score_stores`)."""
    table = pd.read_csv(path)
    missing = {"layer", "feature", "token_share", "distinct_top"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a complexity table, missing columns {sorted(missing)}")
    return table


def complexity_join(complexity: pd.DataFrame, forward: pd.DataFrame) -> pd.DataFrame:
    """Complexity scores beside each feature's MPPC (features with both)."""
    joined = complexity.merge(forward[["layer", "feature", "mppc"]], on=["layer", "feature"], validate="one_to_one")
    return joined.dropna(subset=["mppc", "token_share"])


def complexity_stats(joined: pd.DataFrame) -> dict:
    """Spearman correlations of MPPC with the token share and with the distinct-token count."""
    out = {"features": int(len(joined))}
    for col in ("token_share", "distinct_top"):
        rho, p = stats.spearmanr(joined[col], joined["mppc"])
        out[col] = {"spearman": float(rho), "p_value": float(p)}
    return out


def summarize(config: dict, plan: dict, tables: dict, complexity: dict) -> dict:
    """Every number the page states. ``tables``: ``{comparison: (forward, reverse)}``;
    ``complexity``: ``{"model/seed": table}``."""
    comps = config["comparisons"]
    out = {"high": HIGH, "near_zero": NEAR_ZERO, "null_percentile": NULL_PERCENTILE, "comparisons": {}}
    for name in plan["main"] + plan["nulls"]:
        forward, reverse = tables[name]
        c = comps[name]
        row = {"kind": c["kind"], "a": c["a"], "b": c["b"], "seed_a": c["seed_a"], "seed_b": c["seed_b"],
               "shift": c["shift"], "label": c["label"], "is_null": c["shift"] > 0,
               "forward": distribution(forward["mppc"]), "reverse": distribution(reverse["mppc"])}
        null = plan["chance"].get(name)
        if null is not None:
            level = chance_level(tables[null][0]["mppc"])
            valid = forward["mppc"].dropna()
            row["chance"] = {"null": null, **level, "share_above_p99": float((valid > level["p99"]).mean())}
        else:
            row["chance"] = None
        out["comparisons"][name] = row
    out["differences"] = []
    for cross, skyline in plan["differences"]:
        diff = paired_difference(tables[cross][0], tables[skyline][0])
        out["differences"].append({"cross": cross, "skyline": skyline, **difference_stats(diff["difference"])})
    out["pairs"] = pair_summaries(plan, out)
    out["complexity"] = {}
    for source, table in complexity.items():
        model, seed = source.split("/")
        for name in plan["main"]:
            c = comps[name]
            if c["kind"] == "sae" and c["a"] == model and str(c["seed_a"]) == seed:
                out["complexity"].setdefault(source, {})[name] = complexity_stats(
                    complexity_join(table, tables[name][0]))
    return out


def pair_summaries(plan: dict, summary: dict) -> dict:
    """``{cross comparison: {"a", "b", "arch_b", "sae", "neuron", "skyline", "difference"}}``: each
    cross-architecture pair's numbers side by side (``sae`` / ``neuron``: that comparison's
    ``comparison`` name, ``forward``, ``reverse`` and ``chance`` from ``summary["comparisons"]``,
    None without a neuron baseline; ``difference``: the first of ``summary["differences"]`` with
    this cross comparison, else None)."""
    rows = summary["comparisons"]
    pick = lambda name: None if name is None else {"comparison": name, **{k: rows[name][k] for k in
                                                                          ("forward", "reverse", "chance")}}
    out = {}
    for p in plan["pairs"]:
        diffs = [d for d in summary["differences"] if d["cross"] == p["cross"]]
        out[p["cross"]] = {"a": p["a"], "b": p["b"], "arch_b": p["arch_b"], "sae": pick(p["cross"]),
                           "neuron": pick(p["neuron"]), "skyline": diffs[0]["skyline"] if diffs else p["skyline"],
                           "difference": diffs[0] if diffs else None}
    return out


# ---- the page -------------------------------------------------------------------------------


def _shade(act: float, top: float) -> str:
    alpha = 0.0 if top <= 0 else min(max(act / top, 0.0), 1.0)
    return f"background: rgba(230, 97, 0, {alpha:.2f})"


def _show(token: str) -> str:
    """Printable token: newlines and tabs visible; indentation as dots, at most four, so that one
    whitespace token does not push the rest of a context off the card."""
    if token.strip(" \n\t") == "" and token:
        return html.escape(re.sub(r" +", lambda m: "\u00b7" * min(len(m.group()), 4),
                                  token.replace("\n", "\u21b5").replace("\t", "\u2192")))
    return html.escape(token.replace("\n", "\u21b5").replace("\t", "\u2192"))


def context_html(ctx: dict, top: float) -> str:
    """One context as spans shaded by activation (relative to the feature's top activation)."""
    spans = []
    for i, (tok, act) in enumerate(zip(ctx["tokens"], ctx["acts"])):
        cls = ' class="centre"' if i == ctx["centre"] else ""
        spans.append(f'<span{cls} style="{_shade(act, top)}" title="{act:.3f}">{_show(tok)}</span>')
    return "".join(spans)


def render_page(summary: dict, plan: dict, figures: list[dict], cards: dict[str, list[dict]],
                config: dict, circuits: dict | None = None, sae: dict | None = None,
                measures: dict | None = None, judge: dict | None = None) -> str:
    """The HTML page. ``figures``: ``[{"name", "title", "src" (relative path), "caption"}]``;
    ``cards``: ``{comparison: [card]}`` from :func:`universality.report.cards.build_cards`;
    ``circuits``: ``{"findings", "figures" [{"src", "caption"}], "tables"}`` or None;
    ``sae``: :func:`universality.report.sae.summarize_sae` (+ ``"figure"``: relative path) or None;
    ``measures``: report/measures.json plus ``figures`` [{"name", "title", "src"}] or None
    (the section of :mod:`universality.report.measures`, template ``measures.html.j2``);
    ``judge``: report/judge/summary.json with ``figures`` ([{"name", "src", "caption"}]) or None."""
    import jinja2
    import markupsafe

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parents[1] / "templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["f3"] = lambda x: "\u2014" if x is None or x != x else f"{x:.3f}"
    env.filters["pct"] = lambda x: "\u2014" if x is None or x != x else f"{100 * x:.1f}%"
    env.globals["context_html"] = lambda ctx, top: markupsafe.Markup(context_html(ctx, top))
    return env.get_template("report.html.j2").render(
        summary=summary, plan=plan, figures=figures, cards=cards, config=config, circuits=circuits, sae=sae,
        measures=measures, judge=judge)


#: Titles of the figures on the page (captions: report/captions/{name}.rst, shared with `--report`).
FIGURE_TITLES = {
    "distributions": "MPPC distributions with the permutation null (paper Fig. 3a)",
    "difference": "Per-feature MPPC difference, each cross-architecture pair minus model seed (paper Figs. 3b, 11b)",
    "depth": "Depth specialisation in both directions (paper Figs. 3c and 10)",
    "layer_groups": "MPPC by layer group of A (paper Fig. 8)",
    "forward_reverse": "Forward vs reverse MPPC (paper Fig. 9)",
    "complexity": "MPPC vs an objective complexity score (paper Fig. 5a, without an LLM)",
}


def circuit_tables(summary: dict, results: str) -> list[dict]:
    """The circuits section's tables (:func:`universality.report.circuits.circuit_tables`)."""
    from universality.report.circuits import circuit_tables as tables

    return tables(summary, results)
