"""The measures beside MPPC on the micro pipeline's outputs: recomputed from the tables they
read, invariants that tie them to MPPC, and the page's cells."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

pytestmark = pytest.mark.slow


def test_depth_numbers_are_recomputed_from_the_tables(micro):
    work, _, cfg = micro
    root = work / cfg["results"]
    for name, c in cfg["comparisons"].items():
        d = json.loads((root / "measures" / "depth" / f"{name}.json").read_text())
        t = pd.read_csv(root / "mppc" / f"{name}.csv.gz")
        t = t[t["match_layer"] >= 0]
        n_a, n_b = cfg["models"][c["a"]]["n_layers"], cfg["models"][c["b"]]["n_layers"]
        assert d["forward"]["matched"] == len(t)
        if t["layer"].nunique() > 1 and t["match_layer"].nunique() > 1:
            assert d["forward"]["spearman"] == pytest.approx(stats.spearmanr(t["layer"], t["match_layer"])[0])
            assert d["forward"]["slope"] == pytest.approx(np.polyfit(t["layer"], t["match_layer"], 1)[0])
        diag = (t["layer"] + 0.5) * n_b / n_a - 0.5
        assert d["forward"]["near_diagonal"] == pytest.approx((np.abs(t["match_layer"] - diag) <= 1).mean())
        assert len(d["forward"]["app_c"]) == n_a and len(d["reverse"]["app_c"]) == n_b


def test_matching_is_one_to_one_and_below_mppc(micro):
    work, _, cfg = micro
    root = work / cfg["results"]
    for name in cfg["comparisons"]:
        m = json.loads((root / "measures" / "matching" / f"{name}.json").read_text())
        table = pd.read_csv(root / "measures" / "matching" / f"{name}.csv.gz")
        matched = table[table["match_layer"] >= 0]
        assert not matched.duplicated(["match_layer", "match_feature"]).any()  # one to one
        assert len(matched) == m["matched"] and (matched["r"] > 0).all()
        fwd = pd.read_csv(root / "mppc" / f"{name}.csv.gz").set_index(["layer", "feature"])["mppc"]
        # a matched pair's r never exceeds the feature's MPPC (the max over all candidates)
        mp = fwd.reindex(pd.MultiIndex.from_frame(matched[["layer", "feature"]])).to_numpy()
        assert (matched["r"].to_numpy() <= mp + 1e-6).all()
        for t, share in m["share_matched"].items():
            assert share <= m["mppc_share_above"][t] + 1e-12
        assert 0 <= m["many_to_one"]["share_shared"] <= 1 and m["mutual_best"]["pairs"] <= int(fwd.notna().sum())


def test_similarity_maps_and_the_page(micro):
    work, _, cfg = micro
    root = work / cfg["results"]
    summary = json.loads((root / "report" / "measures.json").read_text())
    page = (root / "report" / "index.html").read_text()
    assert 'id="table-measures"' in page and 'id="figure-similarity_maps"' in page
    for name, c in cfg["comparisons"].items():
        row = summary["comparisons"][name]
        v = pd.read_csv(root / "mppc" / f"{name}.csv.gz")["mppc"]
        assert row["mppc"]["dead_as_zero"] == pytest.approx(v.fillna(0).mean())
        assert row["mppc"]["dead_as_zero"] <= row["mppc"]["excluded_out"] + 1e-12 or v.min() < 0
        if c.get("shift", 0) == 0 and c["kind"] == "sae" and c["a"] != c["b"]:
            cka = pd.read_csv(root / "measures" / "cka" / f"{name}.csv")
            n = cfg["models"][c["a"]]["n_layers"] * cfg["models"][c["b"]]["n_layers"]
            assert len(cka) == n and cka["cka"].between(0, 1).all() and cka["p_value"].between(0, 1).all()
            assert row["cka"]["max"] == pytest.approx(cka["cka"].max())
        if c.get("shift", 0) == 0 and c["kind"] == "sae":
            s = pd.read_csv(root / "measures" / "svcca_rsa" / f"{name}.csv")
            assert len(s) == cfg["models"][c["a"]]["n_layers"] * cfg["models"][c["b"]]["n_layers"]
