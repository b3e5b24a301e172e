"""What the report states about the judge's scores (paper Figs. 5a, 5b, 4 and 12).

Input: one score table per judged source (``model/seed``, :func:`.scores.read_scores`), the
forward MPPC tables of the comparisons whose A is that source, the objective proxy
(:mod:`universality.report.complexity`) and the samples the judge read. Scores are grouped by
``argmax`` (an integer 1..5, as the paper's judge returns); correlations use ``expected``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from universality.report.judge.prompts import SCORES
from universality.report.judge.scores import LOW_MPPC

#: Shown on the page when the judge is the small offline model.
WEAK_JUDGE = ("The judge is SmolLM2-135M-Instruct, a 135M-parameter model run offline; the paper used "
              "GPT-4o. Such a small model does not follow the scoring instructions reliably (it is "
              "read from its next-token probabilities of the digits 1-5, not from an answer it "
              "writes), so these scores are weak evidence: compare them with the objective proxy "
              "beside them, and set judge.kind: openai for a strong judge.")


def _spearman(x: pd.Series, y: pd.Series) -> dict:
    ok = x.notna() & y.notna()
    if ok.sum() < 3 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return {"spearman": float("nan"), "p_value": float("nan"), "n": int(ok.sum())}
    rho, p = stats.spearmanr(x[ok], y[ok])
    return {"spearman": float(rho), "p_value": float(p), "n": int(ok.sum())}


def by_score(table: pd.DataFrame, score: str, mppc: pd.Series) -> list[dict]:
    """Per integer score 1..5: count, MPPC quartiles and share below :data:`LOW_MPPC`."""
    out = []
    for k in range(1, 6):
        v = mppc[(table[f"{score}_argmax"] == k) & mppc.notna()].to_numpy(dtype=np.float64)
        q = np.percentile(v, [25, 50, 75]) if len(v) else [np.nan] * 3
        out.append({"score": k, "n": int(len(v)), "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2]),
                    "mean": float(v.mean()) if len(v) else float("nan"),
                    "share_below_low": float((v < LOW_MPPC).mean()) if len(v) else float("nan")})
    return out


def with_mppc(table: pd.DataFrame, forward: pd.DataFrame) -> pd.Series:
    """The MPPC of each scored feature in one comparison (aligned to ``table``'s rows)."""
    m = table[["layer", "feature"]].merge(forward[["layer", "feature", "mppc"]], on=["layer", "feature"], how="left")
    return pd.Series(m["mppc"].to_numpy(), index=table.index)


def source_summary(table: pd.DataFrame, forwards: dict[str, pd.DataFrame], roles: dict[str, str],
                   proxy: pd.DataFrame | None) -> dict:
    """Counts, Fig. 5a / 5b statistics per comparison, and agreement with the proxy."""
    out = {"features": int(len(table)), "bins": table.groupby("bin", sort=False).size().to_dict(),
           "unparseable": {s: int((~table[f"{s}_parsed"].astype(bool)).sum()) for s in SCORES},
           "digit_mass": {s: float(table[f"{s}_digit_mass"].mean()) for s in SCORES},
           "score_counts": {s: {str(k): int((table[f"{s}_argmax"] == k).sum()) for k in range(1, 6)} for s in SCORES},
           "comparisons": {}}
    for name, forward in forwards.items():
        mppc = with_mppc(table, forward)
        out["comparisons"][name] = {
            "role": roles[name],
            **{s: {"by_score": by_score(table, s, mppc), "rho_mppc": _spearman(table[s], mppc)} for s in SCORES}}
    out["proxy"] = None
    if proxy is not None:
        p = table[["layer", "feature"]].merge(proxy, on=["layer", "feature"], how="left")
        p.index = table.index
        out["proxy"] = {
            "token_share": _spearman(table["complexity"], p["token_share"]),
            "distinct_top": _spearman(table["complexity"], p["distinct_top"]),
            "monosemanticity_token_share": _spearman(table["monosemanticity"], p["token_share"])}
    return out


def card(feature: dict, row: pd.Series, mppc: dict[str, float]) -> dict:
    """A Fig. 4 / Fig. 12 card: the feature's samples (as the judge read them) and its scores."""
    return {**feature, "scores": {s: {"expected": float(row[s]), "argmax": int(row[f"{s}_argmax"]),
                                      "raw": str(row[f"{s}_raw"]), "parsed": bool(row[f"{s}_parsed"])}
                                  for s in SCORES},
            "mppc_by": {k: (None if v != v else float(v)) for k, v in mppc.items()}}


def pick_cards(table: pd.DataFrame, features: list[dict], forwards: dict[str, pd.DataFrame], main: str,
               per_score: int = 1, low: int = 4) -> dict:
    """``{"by_complexity": [cards], "low": [cards]}``: up to ``per_score`` features per complexity
    score (highest MPPC first, as Fig. 4), and up to ``low`` features with MPPC below
    :data:`LOW_MPPC` in ``main`` (App. F, Fig. 12), lowest first."""
    at = {(f["layer"], f["feature"]): f for f in features}
    mppc = {n: with_mppc(table, fw) for n, fw in forwards.items()}
    t = table.assign(_m=mppc[main])

    def make(rows: pd.DataFrame) -> list[dict]:
        return [card(at[(int(r.layer), int(r.feature))], r, {n: m[i] for n, m in mppc.items()})
                for i, r in rows.iterrows() if (int(r.layer), int(r.feature)) in at]

    simple = pd.concat([g.sort_values("_m", ascending=False).head(per_score)
                        for _, g in t[t["complexity_argmax"] > 0].groupby("complexity_argmax")]) if len(t) else t
    return {"by_complexity": make(simple), "low": make(t[t["_m"] < LOW_MPPC].sort_values("_m").head(low))}
