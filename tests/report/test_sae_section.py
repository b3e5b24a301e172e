"""The report's SAE section (issue 19): quality per SAE from metrics.json, the sweep's MPPC per
variant recomputed from its tables, the figure, and the page cells (micro preset)."""
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from universality.report import sae as sae_report
from universality.workflow.config import validate
from universality.workflow.sweep import sweep_entries


def table(values):
    return pd.DataFrame({"layer": 0, "feature": np.arange(len(values)), "mppc": values,
                         "match_layer": 0, "match_feature": 0})


def metrics(path, ev, l0):
    path.mkdir()
    (path / "metrics.json").write_text(json.dumps({
        "explained_variance": ev, "mean_l0": l0, "dead_fraction": 0.25, "dense_fraction": 0.0,
        "ce_loss_recovered": None, "d_sae": 8, "training": {"tokens": 512}}))
    return path / "metrics.json"


def test_sweep_rows_and_summary_recompute_the_tables(tmp_path):
    sweep = {"model": "m", "layer": 1, "base_seed": 0, "variants": {"init": {"init_seed": 1}, "lr": {"lr": 1e-3}}}
    entries = {"init": {"variant": "init", "shift": 0}, "lr": {"variant": "lr", "shift": 0},
               "null": {"variant": "init", "shift": 5}}
    tables = {"init": (table([0.9, 0.99, np.nan]), table([0.8, 0.7])), "lr": (table([0.5, 0.97]), table([0.6])),
              "null": (table([0.1, 0.2]), table([0.3]))}
    q = {v: sae_report.quality_row(metrics(tmp_path / v, 0.9, 3.0), variant=v) for v in sweep["variants"]}
    base = sae_report.quality_row(metrics(tmp_path / "base", 0.8, 2.0), model="m", layer=1, seed=0)
    other = sae_report.quality_row(metrics(tmp_path / "other", 0.7, 2.0), model="m", layer=0, seed=0)
    assert base == {"model": "m", "layer": 1, "seed": 0, "explained_variance": 0.8, "mean_l0": 2.0,
                    "dead_fraction": 0.25, "dense_fraction": 0.0, "ce_loss_recovered": None, "d_sae": 8,
                    "train_tokens": 512}
    rows = sae_report.sweep_rows(sweep, entries, tables, q)
    assert [r["entry"] for r in rows] == ["init", "lr", "null"] and [r["is_null"] for r in rows] == [False, False, True]
    assert rows[0]["forward"]["mean"] == pytest.approx(0.945) and rows[0]["forward"]["excluded"] == 1
    assert rows[0]["forward"]["share_above_high"] == pytest.approx(0.5)
    assert rows[1]["reverse"]["mean"] == pytest.approx(0.6) and rows[1]["changes"] == "lr = 0.001"
    s = sae_report.summarize_sae([other, base], sweep, rows)
    assert s["sweep"]["base_quality"] == base and s["sweep"]["null"]["entry"] == "null"
    assert sae_report.summarize_sae([base], None, [])["sweep"] is None
    out = tmp_path / "sweep.png"
    sae_report.sweep_figure(s, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Rows(HTMLParser):
    """{(table id, row key): [cell texts]} for the rows with data-sae / data-variant."""

    def __init__(self):
        super().__init__()
        self.rows, self.table, self.row, self.cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr" and ("data-sae" in a or "data-variant" in a):
            self.row = a.get("data-sae") or a.get("data-variant")
            self.rows[(self.table, self.row)] = []
        elif tag == "td" and self.row:
            self.cell = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[(self.table, self.row)].append(self.cell.strip())
            self.cell = None
        elif tag == "tr":
            self.row = None


@pytest.mark.slow
def test_micro_sae_section_is_recomputed_from_its_inputs(micro):
    work, _, cfg = micro
    root = work / cfg["results"]
    info = json.loads((root / "report" / "sae.json").read_text())
    page = Rows()
    page.feed((root / "report" / "index.html").read_text())
    for q in info["quality"]:
        m = json.loads((root / "saes" / q["model"] / "resid" / f"L{q['layer']}" / f"seed{q['seed']}"
                        / "metrics.json").read_text())
        assert q["explained_variance"] == m["explained_variance"] and q["mean_l0"] == m["mean_l0"]
        assert q["ce_loss_recovered"] == m["ce_loss_recovered"]
        cells = page.rows[("sae-quality-table", f"{q['model']}/L{q['layer']}/seed{q['seed']}")]
        assert cells[4] == f"{m['explained_variance']:.3f}" and cells[8] == f"{m['ce_loss_recovered']:.3f}"
    extra = {m: len(seeds) for m, seeds in cfg["saes"].get("extra_seeds", {}).items()}
    n_saes = sum(spec["n_layers"] * (1 + extra.get(m, 0)) for m, spec in cfg["models"].items())
    assert len(info["quality"]) == n_saes
    entries = sweep_entries(validate(cfg))
    assert [r["entry"] for r in info["sweep"]["rows"]] == list(entries)
    for r in info["sweep"]["rows"]:
        fwd = pd.read_csv(root / "sae_sweep" / "mppc" / f"{r['entry']}.csv.gz")["mppc"].dropna().to_numpy()
        summary = json.loads((root / "sae_sweep" / "mppc" / f"{r['entry']}.json").read_text())
        assert r["forward"]["mean"] == pytest.approx(fwd.mean(), abs=1e-12)
        assert r["forward"]["mean"] == pytest.approx(summary["forward"]["mean_mppc"], abs=1e-9)
        assert len(fwd) > 0 and page.rows[("sae-sweep-table", r["entry"])][2] == f"{fwd.mean():.3f}"
        variant = json.loads((root / "sae_sweep" / "saes" / entries[r["entry"]]["variant"] / "metrics.json").read_text())
        assert r["quality"]["explained_variance"] == variant["explained_variance"]
        assert variant["config"]["init_seed"] == cfg["sae_sweep"]["variants"][r["variant"]].get("init_seed", 0)
        assert variant["config"]["data_seed"] == cfg["sae_sweep"]["variants"][r["variant"]].get("data_seed", 0)
    assert (root / "report" / "figures" / "sae_sweep.png").exists()
