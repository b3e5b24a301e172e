"""The circuits section's tables for the report page, laid out as the paper's App. G-H.

Built from the CSVs that ``circuits/summary.json`` lists and from the per-model summaries in it:
Mamba SSM-state patching as layer x distance (Table 1), c at the key layer and x at the key layer
as position x distance (Tables 2-4), each cell "mean [95% bootstrap interval]", with the paper's
Mamba-130m number in a column beside ours when the model is the paper's checkpoint
(``paper_reference``); the broader variants as means; IOI per position at the peak layer; GPT-NeoX
head scores and the sender -> induction-head path table; RWKV's WKV-state and k / v tables
(``circuits.wkv_paths``) laid out as the Mamba's.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from universality.circuits.heads import INPUTS
from universality.circuits.ssm_paths import paper_tables

__all__ = ["circuit_tables"]

_PROMPT = {"B'": "[A][B']...[A]", "A'": "[A'][B]...[A]"}


def _cell(row) -> str:
    if row.ci_low != row.ci_low:     # NaN: no resamples
        return f"{row.logit_diff:+.2f}"
    return f"{row.logit_diff:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def _grid(df: pd.DataFrame, index: str, label, paper: dict | None, order=None) -> tuple[list, list]:
    """(columns, rows) of an index x distance table of "mean [ci]" cells (+ the paper's column
    beside each distance where ``paper`` {distance: {index value: number}} is given)."""
    distances = sorted(df.distance.unique())
    keys = order or sorted(df[index].unique())
    cols = [index]
    for d in distances:
        cols += [f"d={d}"] + ([f"d={d} paper"] if paper else [])
    rows = []
    for k in keys:
        row = [label(k)]
        for d in distances:
            hit = df[(df[index] == k) & (df.distance == d)]
            row.append(_cell(hit.iloc[0]) if len(hit) else "")
            if paper:
                v = paper.get(str(d), {}).get(str(k))
                row.append("" if v is None else f"{v:+.2f}")
        rows.append(row)
    return cols, rows


def _mamba(name: str, df: pd.DataFrame, s: dict) -> list[dict]:
    key = s.get("key_layer")
    ref = paper_tables()["tables"] if s.get("paper_reference") == "mamba-130m" else None
    note = " — paper Mamba-130m beside ours (App. G)" if ref else ""
    model, out = s["model"], []
    positions = ["A1", "B1", "B1+1", "B1+2", "B1+3"]
    if name == "state":
        for corr, part in df.groupby("corruption", sort=False):
            paper = ref["state"]["values"] if ref and corr == "B'" else None
            cols, rows = _grid(part, "layer", lambda l: f"L{l}", paper)
            full = part.groupby("distance")["corrupt_logit_diff"].first()
            rows.append(["full corruption"] + sum(([f"{full[d]:+.2f}"] + ([""] if paper else []) for d in full.index), []))
            out.append({"title": f"{model}: SSM state at the final [A] of one layer from {_PROMPT[corr]}, other layers' "
                                 f"states frozen (paper Table 1; change of B's logit){note if paper else ''}",
                        "columns": cols, "rows": rows})
    elif name in ("ssm_in", "conv_in"):
        for corr, part in df[df.layer == key].groupby("corruption", sort=False):
            table = "ssm_in" if name == "ssm_in" else f"conv_in_{corr}"
            paper = ref[table]["values"] if ref and table in ref and (name == "conv_in" or corr == "B'") else None
            order = [p for p in positions if p in set(part.position)]
            cols, rows = _grid(part, "position", str, paper, order)
            what = ("SSM input c, into the state only (paper Table 2)" if name == "ssm_in" else
                    "conv input x, into c at B1+1 (paper Tables 3-4)")
            out.append({"title": f"{model}: {what} at the key layer L{key}, from {_PROMPT[corr]}"
                                 + (f"{note}; the paper's layer is 17" if paper else ""),
                        "columns": cols, "rows": rows})
    elif name in ("state_all_positions", "ssm_in_all_paths"):
        part = df if name == "state_all_positions" else df[df.layer == key]
        index = "layer" if name == "state_all_positions" else "position"
        t = part.pivot_table(index=index, columns="distance", values="logit_diff")
        what = ("states at EVERY position of one layer" if index == "layer" else
                f"c at one position of L{key} through EVERY path")
        out.append({"title": f"{model}: broader variant, {what} ([A][B']...[A]; means, intervals in the CSV)",
                    "columns": [index] + [f"d={d}" for d in t.columns],
                    "rows": [[str(i)] + [float(v) for v in t.loc[i]] for i in t.index]})
    elif name == "ioi":
        i = s["ioi"]
        part = df[df.layer == i["peak_layer"]]
        rows = []
        for pos, g in part.groupby("position"):
            by = {r.metric: r for r in g.itertuples()}
            rows.append([str(g.token.iloc[0])] + [_cell(by[m]) for m in ("io", "s", "io_minus_s")])
        kind = "templated sentences" if i["templated"] else f"random-token frame ({i['fallback_reason']})"
        out.append({"title": f"{model}: IOI, c at layer {i['peak_layer']} (the peak layer) per position, from "
                             f"[IO']...[S']...[S']... — {kind} (paper Fig. 13)",
                    "columns": ["position", "Δ logit IO", "Δ logit S", "Δ (IO − S)"], "rows": rows})
    return out


def _rwkv(name: str, df: pd.DataFrame, s: dict) -> list[dict]:
    """RWKV (``wkv_paths``): the read WKV state per layer x distance, k / v at the key layer per
    position x distance, the all-positions variant as means."""
    model, key, out = s["model"], s["key_layer"], []
    if name == "state":
        for corr, part in df.groupby("corruption", sort=False):
            cols, rows = _grid(part, "layer", lambda l: f"L{l}", None)
            full = part.groupby("distance")["corrupt_logit_diff"].first()
            rows.append(["full corruption"] + [f"{full[d]:+.2f}" for d in full.index])
            out.append({"title": f"{model}: WKV state (num, den, max) of one layer read at the final [A], from "
                                 f"{_PROMPT[corr]}, other layers' states frozen (Table 1's definition carried to "
                                 "RWKV; change of B's logit)", "columns": cols, "rows": rows})
    elif name == "kv_in":
        positions = ["A1", "B1", "B1+1", "B1+2", "B1+3"]
        for (corr, part_name), part in df[df.layer == key].groupby(["corruption", "patched"], sort=False):
            order = [p for p in positions if p in set(part.position)]
            cols, rows = _grid(part, "position", str, None, order)
            what = {"kv": "key and value", "k": "key alone", "v": "value alone"}[part_name]
            out.append({"title": f"{model}: {what} at one position of the key layer L{key}, into the WKV state only, "
                                 f"from {_PROMPT[corr]} (the analogue of Mamba's c, paper Table 2)",
                        "columns": cols, "rows": rows})
    elif name == "state_all_positions":
        t = df[df.corruption == "B'"].pivot_table(index="layer", columns="distance", values="logit_diff")
        out.append({"title": f"{model}: broader variant, WKV states at EVERY position of one layer ([A][B']...[A]; "
                             "means, intervals in the CSV)",
                    "columns": ["layer"] + [f"d={d}" for d in t.columns],
                    "rows": [[str(i)] + [float(v) for v in t.loc[i]] for i in t.index]})
    return out


def _neox(name: str, df: pd.DataFrame, s: dict) -> list[dict]:
    model = s["model"]
    if name == "head_scores":
        return [{"title": f"{model}: attention scores per head (previous token, induction)",
                 "columns": ["layer", "head", "previous-token score", "induction score"],
                 "rows": [[int(r.layer), int(r.head), float(r.prev_token), float(r.induction)] for r in df.itertuples()]}]
    if name == "head_paths" and s.get("paths"):
        out = []
        for corr in ("A'", "B'"):
            ws = {inp: s["paths"][f"{inp} {corr}"] for inp in INPUTS}
            senders = list(ws["k"]["mean"])
            rows = [[snd] + [f"{ws[i]['mean'][snd]:+.2f} [{ws[i]['ci'][snd][0]:+.2f}, {ws[i]['ci'][snd][1]:+.2f}]"
                             for i in INPUTS] for snd in senders]
            out.append({"title": f"{model}: path patching sender head -> {s['path_receiver']}'s query / key / value from "
                                 f"{_PROMPT[corr]} (direct path, the rest frozen; mean over distances)",
                        "columns": ["sender"] + [f"-> {i}" for i in INPUTS], "rows": rows})
        return out
    return []


def circuit_tables(summary: dict, results: str) -> list[dict]:
    """``[{"title", "columns", "rows", "src"}]`` for the page, ``src`` the CSV path relative to
    ``results`` (the page links it)."""
    per_model = {m: s for arch in summary.get("primary", {}) for m, s in summary.get(arch, {}).items()}
    out = []
    for path in summary.get("tables", []):
        name, model = Path(path).stem, Path(path).parent.name
        s = per_model.get(model)
        if s is None:
            continue
        df = pd.read_csv(path)
        made = (_rwkv(name, df, s) if "kv_in" in s else _mamba(name, df, s) if "key_layer" in s
                else _neox(name, df, s))
        for t in made:
            t["src"] = os.path.relpath(path, results)
        out += made
    return out
