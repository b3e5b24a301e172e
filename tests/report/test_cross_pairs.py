"""Issue 14: every cross-architecture pair in the report, side by side (plan, numbers, page, figure).

The plan is checked on the micro preset (two cross pairs: GPT-NeoX -> Mamba and -> RWKV); the
numbers on planted MPPC tables against a plain float64 loop; the page by its table cells.
"""
import copy
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from universality.report import figures
from universality.report import page as report
from universality.workflow.config import ConfigError, report_plan, validate
from universality.workflow.judge import judge_plan
from universality.workflow.roles import comparison_role
from test_report import Cells  # the page's table cells by (table id, row, key)


@pytest.fixture
def micro_cfg(repo):
    return yaml.safe_load((repo / "presets" / "micro.yaml").read_text())


def test_plan_has_every_cross_pair_with_its_null_baseline_and_skyline(micro_cfg):
    plan = report_plan(validate(micro_cfg))
    assert plan["differences"] == [["cross_arch", "model_seed"], ["cross_arch_rwkv", "model_seed"]]
    assert plan["cards"] == ["cross_arch", "cross_arch_rwkv"]
    assert "difference" in plan["figures"]
    assert plan["pairs"] == [
        {"cross": "cross_arch", "a": "neox-s0", "b": "mamba-s0", "arch_b": "mamba", "null": "cross_arch_null",
         "neuron": "neuron_baseline", "neuron_null": "neuron_baseline_null", "skyline": "model_seed"},
        {"cross": "cross_arch_rwkv", "a": "neox-s0", "b": "rwkv-s0", "arch_b": "rwkv", "null": "cross_arch_rwkv_null",
         "neuron": "neuron_baseline_rwkv", "neuron_null": "neuron_baseline_rwkv_null", "skyline": "model_seed"}]
    assert plan["chance"]["neuron_baseline_rwkv"] == "neuron_baseline_rwkv_null"


def test_untrained_control_is_its_own_role_and_never_a_skyline(micro_cfg):
    cfg = validate(micro_cfg)
    assert comparison_role(cfg, "random_init") == "control"
    assert comparison_role(cfg, "cross_arch_rwkv") == "cross_arch" and comparison_role(cfg, "model_seed") == "model_seed"
    assert judge_plan(cfg)["sources"][0]["roles"]["random_init"] == "control"
    assert judge_plan(cfg)["sources"][0]["roles"]["cross_arch_rwkv"] == "cross_arch"
    # the control listed first: still not the skyline; without the model-seed comparison, no difference
    reordered = copy.deepcopy(micro_cfg)
    reordered["comparisons"] = {"random_init": micro_cfg["comparisons"]["random_init"],
                                **{k: v for k, v in micro_cfg["comparisons"].items() if k != "random_init"}}
    assert [s for _, s in report_plan(validate(reordered))["differences"]] == ["model_seed", "model_seed"]
    del reordered["comparisons"]["model_seed"]
    plan = report_plan(validate(reordered))
    assert plan["differences"] == [] and "difference" not in plan["figures"]
    assert [p["skyline"] for p in plan["pairs"]] == [None, None]


def test_report_difference_takes_one_pair_or_a_list(micro_cfg):
    single = copy.deepcopy(micro_cfg)
    single["report"] = {"difference": ["cross_arch_rwkv", "model_seed"]}  # the old single form
    assert report_plan(validate(single))["differences"] == [["cross_arch_rwkv", "model_seed"]]
    listed = copy.deepcopy(micro_cfg)
    listed["report"] = {"difference": [["cross_arch_rwkv", "model_seed"], ["cross_arch", "sae_seed"]]}
    assert report_plan(validate(listed))["differences"] == [["cross_arch_rwkv", "model_seed"], ["cross_arch", "sae_seed"]]
    listed["report"] = {"difference": [["cross_arch", "model_seed"], ["cross_arch_rwkv", "cross_arch_rwkv_null"]]}
    with pytest.raises(ConfigError, match=r"report.difference\[1\]\[1\]: 'cross_arch_rwkv_null' is a permutation null"):
        validate(listed)
    listed["report"] = {"difference": [["cross_arch", "model_seed"], ["cross_arch_rwkv", "neuron_baseline_rwkv"]]}
    with pytest.raises(ConfigError, match=r"report.difference\[1\]: .* do not share A"):
        validate(listed)
    single["report"] = {"difference": ["cross_arch", "nope"]}
    with pytest.raises(ConfigError, match=r"report.difference\[1\]: no comparison 'nope'"):
        validate(single)
    single["report"] = {"difference": [["cross_arch"]]}
    with pytest.raises(ConfigError, match="report.difference"):
        validate(single)


# ---- numbers on planted tables ------------------------------------------------------------------


def planted_tables(rng, names, n_layers=2, n_features=50):
    """``{name: (forward, reverse)}`` MPPC tables with a few excluded (NaN) features."""
    out = {}
    for i, name in enumerate(names):
        rows = []
        for layer in range(n_layers):
            m = np.clip(rng.normal(0.5 + 0.05 * i, 0.2, n_features), -1, 1)
            m[rng.random(n_features) < 0.1] = np.nan
            rows.append(pd.DataFrame({"layer": layer, "feature": np.arange(n_features), "mppc": m,
                                      "match_layer": 0, "match_feature": 0}))
        table = pd.concat(rows, ignore_index=True)
        out[name] = (table, table.copy())
    return out


def slow_difference(cross: pd.DataFrame, skyline: pd.DataFrame) -> list[float]:
    """Per feature of A, cross minus skyline, by a plain loop over rows (float64)."""
    sky = {(int(r.layer), int(r.feature)): float(r.mppc) for r in skyline.itertuples()}
    out = []
    for r in cross.itertuples():
        s = sky[(int(r.layer), int(r.feature))]
        if r.mppc == r.mppc and s == s:
            out.append(float(r.mppc) - s)
    return out


@pytest.fixture
def two_pairs(micro_cfg):
    cfg = validate(micro_cfg)
    plan = report_plan(cfg)
    tables = planted_tables(np.random.default_rng(0), plan["main"] + plan["nulls"])
    return cfg, plan, tables, report.summarize(cfg, plan, tables, {})


def test_summary_is_keyed_per_cross_pair(two_pairs):
    cfg, plan, tables, summary = two_pairs
    assert set(summary["pairs"]) == {"cross_arch", "cross_arch_rwkv"}
    for d, (cross, skyline) in zip(summary["differences"], plan["differences"]):
        want = np.array(slow_difference(tables[cross][0], tables[skyline][0]))
        assert (d["cross"], d["skyline"], d["paired"]) == (cross, skyline, len(want))
        assert d["mean"] == pytest.approx(want.mean(), abs=1e-12)
        assert d["p5"] == pytest.approx(np.percentile(want, 5)) and d["p95"] == pytest.approx(np.percentile(want, 95))
        assert d["share_near_zero"] == pytest.approx((np.abs(want) < report.NEAR_ZERO).mean())
    rwkv = summary["pairs"]["cross_arch_rwkv"]
    assert (rwkv["a"], rwkv["b"], rwkv["arch_b"], rwkv["skyline"]) == ("neox-s0", "rwkv-s0", "rwkv", "model_seed")
    assert rwkv["sae"]["comparison"] == "cross_arch_rwkv" and rwkv["sae"]["chance"]["null"] == "cross_arch_rwkv_null"
    assert rwkv["neuron"]["comparison"] == "neuron_baseline_rwkv"
    assert rwkv["neuron"]["chance"]["null"] == "neuron_baseline_rwkv_null"
    assert rwkv["difference"] == summary["differences"][1]
    valid = tables["cross_arch_rwkv"][0]["mppc"].dropna().to_numpy()
    assert rwkv["sae"]["forward"]["mean"] == pytest.approx(sum(valid) / len(valid), abs=1e-12)
    null = tables["neuron_baseline_rwkv_null"][0]["mppc"].dropna().to_numpy()
    assert rwkv["neuron"]["chance"]["mean"] == pytest.approx(null.mean())


def test_page_shows_both_cross_pairs_side_by_side(two_pairs):
    cfg, plan, _, summary = two_pairs
    card = {"mppc": 0.9, "bin": "[0.9, 1]", **{side: {"layer": 0, "feature": 1, "fires": 3, "max": 1.0, "contexts": [
        {"tokens": ["a", "b"], "acts": [1.0, 0.0], "centre": 0}]} for side in "ab"}}
    text = report.render_page(summary, plan, [], {n: [card] for n in plan["cards"]},
                              {"results": "results", "report": cfg["report"]})
    page = Cells()
    page.feed(text)
    ids = set(re.findall(r'<h2 id="([^"]+)"', text))
    assert {"pairs", "difference", "cards-cross_arch", "cards-cross_arch_rwkv"} <= ids
    for name, p in summary["pairs"].items():
        assert page.cells[("table-pairs", name, "mean")] == f"{p['sae']['forward']['mean']:.3f}"
        assert page.cells[("table-pairs", name, "chance_mean")] == f"{p['sae']['chance']['mean']:.3f}"
        assert page.cells[("table-pairs", name, "neuron_mean")] == f"{p['neuron']['forward']['mean']:.3f}"
        assert page.cells[("table-pairs", name, "neuron_null_mean")] == f"{p['neuron']['chance']['mean']:.3f}"
        row = re.search(f'<tr data-comparison="{name}">(.*?)</tr>', text, re.S).group(1)
        assert f"null {p['sae']['chance']['null']};" in row and f"(null {p['neuron']['chance']['null']})" in row
        assert page.cells[("table-pairs", name, "difference_mean")] == f"{p['difference']['mean']:+.3f}"
        row = f"{name}-{p['skyline']}"
        assert page.cells[("table-difference", row, "mean")] == f"{p['difference']['mean']:.3f}"


def test_difference_figure_has_one_panel_per_pair(two_pairs, tmp_path, monkeypatch):
    cfg, plan, tables, summary = two_pairs
    panels = [(report.paired_difference(tables[d["cross"]][0], tables[d["skyline"]][0]), d)
              for d in summary["differences"]]
    drawn = {}
    real = figures._save

    def spy(fig, out):
        visible = [ax for ax in fig.axes if ax.get_visible()]
        drawn.update(titles=[ax.get_title() for ax in visible], xlims={ax.get_xlim() for ax in visible})
        real(fig, out)

    monkeypatch.setattr(figures, "_save", spy)
    out = tmp_path / "difference.png"
    figures.difference(panels, cfg["comparisons"], str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn["titles"] == ["neox-s0 \u2192 mamba-s0 (cross_arch)", "neox-s0 \u2192 rwkv-s0 (cross_arch_rwkv)"]
    assert len(drawn["xlims"]) == 1  # one shared axis: the pairs read side by side


def test_rwkv_gets_the_wkv_circuits(micro_cfg):
    """RWKV's circuits capability is "wkv" (circuits_wkv): the default selection and an explicit
    list both plan it there, and only there."""
    from universality.workflow.config import circuit_models

    cfg = copy.deepcopy(micro_cfg)
    cfg["circuits"]["models"] = None
    planned = circuit_models(validate(cfg))
    assert planned["wkv"] == ["rwkv-s0"] and planned["ssm"] == ["mamba-s0"]
    assert "rwkv-s0" not in planned["ssm"] + planned["heads"]
    cfg["circuits"]["models"] = ["neox-s0", "rwkv-s0"]
    assert circuit_models(validate(cfg)) == {"ssm": [], "heads": ["neox-s0"], "wkv": ["rwkv-s0"]}
