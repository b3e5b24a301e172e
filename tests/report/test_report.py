"""The universality report: complexity scores and cards against slow references, its numbers
recomputed from the MPPC tables, and the page rendered in headless Chromium (micro preset)."""
import copy
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
import zarr

from universality.core import store
from universality.report import cards
from universality.report import complexity
from universality.report import page as report
from universality.workflow.config import ConfigError, report_plan, validate
from universality.workflow.judge import judge_plan
from universality.workflow.sweep import sweep_entries
from conftest import snakemake

CHROMIUM = "/usr/bin/chromium"


# ---- complexity: against float64 loops --------------------------------------------------------


def slow_token_share(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = []
    for col in x.T.astype(np.float64):
        total = ((col - col.mean()) ** 2).sum()
        if total == 0:
            out.append(np.nan)
            continue
        between = sum((ids == v).sum() * (col[ids == v].mean() - col.mean()) ** 2 for v in np.unique(ids))
        out.append(between / total)
    return np.array(out)


def sparse_features(rng, n=300, f=6, density=0.15):
    x = rng.exponential(1.0, size=(n, f)) * (rng.random((n, f)) < density)
    return x.astype(np.float32)


def test_token_share_matches_a_float64_loop():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, size=300)
    x = sparse_features(rng)
    x[:, 0] = 0.0                                   # never fires: no variance to explain
    x[:, 1] = np.where(ids == 3, 2.5, 0.0)          # a function of the token alone
    x[:, 2] = np.where(ids % 2 == 0, 1.0, 0.0) * rng.exponential(1.0, size=300)
    got = complexity.token_share(sp.csr_matrix(x), ids, vocab_size=11)
    want = slow_token_share(x, ids)
    assert np.isnan(got[0]) and np.isnan(want[0])
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-9, atol=1e-12)
    assert got[1] == pytest.approx(1.0) and 0 < got[3] < 1


def test_distinct_top_and_top_rows_match_a_sort():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=120)
    x = sparse_features(rng, n=120, f=5, density=0.3)
    x[:, 0] = 0.0
    x[[3, 9, 40], 1] = 2.0                          # a tie: lower rows first
    x[:, 2] = 0.0
    x[[7], 2] = 1.0                                 # fires on fewer tokens than k
    csc = sp.csc_matrix(x)
    k = 4
    for j in range(x.shape[1]):
        rows, vals = complexity.top_rows(csc, j, k)
        order = sorted(np.flatnonzero(x[:, j] > 0), key=lambda r: (-x[r, j], r))[:k]
        assert rows.tolist() == order and vals.tolist() == x[order, j].tolist()
    want = [len(set(ids[sorted(np.flatnonzero(x[:, j] > 0), key=lambda r: (-x[r, j], r))[:k]])) for j in range(5)]
    assert complexity.distinct_top(csc, ids, k).tolist() == want
    assert want[0] == 0 and want[2] == 1


# ---- cards -----------------------------------------------------------------------------------


def write_token_set(path, windows, bos=0):
    ids = np.concatenate([np.asarray(w, dtype=np.int32) for w in windows])
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in windows])]).astype(np.int64)
    g = zarr.open_group(str(path), mode="w", attributes={"bos_id": bos, "vocab_size": 50, "split": "eval"})
    g.create_array("ids", data=ids)
    g.create_array("offsets", data=offsets)
    store.seal(path)  # as the tokens rule writes it


def write_csr(path, x):
    m = sp.csr_matrix(x)
    g = zarr.open_group(str(path), mode="w", attributes={"encoding-type": "csr_matrix", "shape": list(x.shape)})
    g.create_array("indptr", data=m.indptr.astype(np.int64))
    g.create_array("indices", data=m.indices.astype(np.int32))
    g.create_array("data", data=m.data.astype(np.float32))
    store.seal(path)  # as the features rule writes it


def test_contexts_map_rows_back_to_windows_and_positions(tmp_path):
    # two windows, each [BOS] + tokens; feature-store rows skip BOS (activations.token_rows)
    windows = [[0] + list(range(1, 13)), [0] + list(range(20, 26))]
    write_token_set(tmp_path / "eval.zarr", windows)
    scored = [(w, p) for w, win in enumerate(windows) for p in range(1, len(win))]
    x = np.zeros((len(scored), 3), dtype=np.float32)
    # feature 0 peaks at window 1 position 2 (token 21) and at window 0 position 11 (token 11)
    peak_a, peak_b = scored.index((1, 2)), scored.index((0, 11))
    x[peak_a, 0], x[peak_b, 0], x[peak_a + 1, 0] = 3.0, 2.0, 0.5
    write_csr(tmp_path / "L0.zarr", x)
    reader = cards.ContextReader({0: str(tmp_path / "L0.zarr")}, str(tmp_path / "eval.zarr"), decode=str, context=3)
    f = reader.feature(0, 0, k=5)
    # one context per distinct window (window 1's second activation is not a sample of its own)
    assert f["fires"] == 3 and f["max"] == 3.0 and len(f["contexts"]) == 2
    first, second = f["contexts"]
    # window 1 is shorter than 7 tokens: all of it, BOS excluded; never crosses into another window
    assert first["tokens"] == ["20", "21", "22", "23", "24", "25"] and first["centre"] == 1
    assert first["acts"] == [0.0, 3.0, 0.5, 0.0, 0.0, 0.0] and first["window"] == 1
    # at the window's right edge the 7-token span shifts inward instead of being cut
    assert second["tokens"] == ["6", "7", "8", "9", "10", "11", "12"] and second["centre"] == 5
    assert second["acts"][second["centre"]] == 2.0 and second["window"] == 0


def test_contexts_are_the_top_windows_by_peak(tmp_path):
    """Ten peaks inside one window give one sample; samples are ranked by each window's peak."""
    windows = [[0] + list(range(1, 40)), [0] + list(range(40, 60)), [0] + list(range(60, 80))]
    write_token_set(tmp_path / "eval.zarr", windows)
    scored = [(w, p) for w, win in enumerate(windows) for p in range(1, len(win))]
    x = np.zeros((len(scored), 1), dtype=np.float32)
    for p in range(1, 30):  # window 0: many high activations
        x[scored.index((0, p)), 0] = 5.0 + p
    x[scored.index((2, 10)), 0] = 4.0
    x[scored.index((1, 5)), 0] = 1.0
    write_csr(tmp_path / "L0.zarr", x)
    reader = cards.ContextReader({0: str(tmp_path / "L0.zarr")}, str(tmp_path / "eval.zarr"), decode=str, context=8)
    f = reader.feature(0, 0, k=10)
    assert [c["window"] for c in f["contexts"]] == [0, 2, 1]
    assert all(len(c["tokens"]) == 17 for c in f["contexts"])
    top = f["contexts"][0]
    assert top["tokens"][top["centre"]] == "29" and top["acts"][top["centre"]] == 34.0
    assert reader.feature(0, 0, k=2)["contexts"][1]["window"] == 2


def test_sample_pairs_per_bin_deterministic_and_valid_only():
    rng = np.random.default_rng(2)
    t = pd.DataFrame({"layer": 0, "feature": np.arange(200), "mppc": rng.random(200),
                      "match_layer": 1, "match_feature": rng.integers(0, 50, 200)})
    t.loc[:9, "mppc"] = np.nan
    t.loc[:9, "match_layer"] = -1
    t.loc[10, "mppc"] = 1.0                         # the last bin includes its upper edge
    bins = [0.0, 0.5, 0.9, 1.0]
    a = cards.sample_pairs(t, bins, per_bin=3, seed=0)
    b = cards.sample_pairs(t, bins, per_bin=3, seed=0)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 9 and a["mppc"].notna().all() and a["mppc"].is_monotonic_decreasing
    assert sorted(a["bin"].value_counts().tolist()) == [3, 3, 3]
    assert not cards.sample_pairs(t, bins, per_bin=3, seed=1).equals(a)


def test_page_escapes_token_text():
    ctx = {"tokens": ["<script>", "&", " x"], "acts": [1.0, 0.0, 0.5], "centre": 0}
    out = report.context_html(ctx, top=1.0)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out
    assert "rgba(230, 97, 0, 1.00)" in out and "rgba(230, 97, 0, 0.50)" in out


# ---- roles of the comparisons ----------------------------------------------------------------


def test_report_plan_infers_roles_and_rejects_bad_keys(repo):
    cfg = yaml.safe_load((repo / "presets" / "micro.yaml").read_text())
    plan = report_plan(validate(cfg))
    assert plan["differences"] == [["cross_arch", "model_seed"], ["cross_arch_rwkv", "model_seed"]]
    assert plan["cards"] == ["cross_arch", "cross_arch_rwkv"]
    assert plan["chance"]["cross_arch"] == "cross_arch_null"
    assert plan["chance"]["neuron_baseline"] == "neuron_baseline_null"  # issue 18: the baseline's own null
    assert plan["chance"]["random_init"] == "cross_arch_null"  # no null of its own: the one with its A
    assert plan["chance"]["cross_arch_rwkv"] == "cross_arch_rwkv_null"
    assert plan["nulls"] == ["cross_arch_null", "neuron_baseline_null", "cross_arch_rwkv_null", "neuron_baseline_rwkv_null"]
    assert plan["complexity"] == [["neox-s0", 0]]
    bad = copy.deepcopy(cfg)
    bad["report"] = {"difference": ["cross_arch", "neuron_baseline"]}
    with pytest.raises(ConfigError, match="report.difference: .* do not share A"):
        validate(bad)
    bad["report"] = {"cards": ["neuron_baseline"]}
    with pytest.raises(ConfigError, match=r"report.cards\[0\]"):
        validate(bad)


# ---- on the micro pipeline's report -------------------------------------------------------------


class Cells(HTMLParser):
    """{(table id, row data-comparison, cell data-key): text} of the page's tables."""

    def __init__(self):
        super().__init__()
        self.cells, self.table, self.row, self.key, self.text = {}, None, None, None, ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr":
            self.row = a.get("data-comparison")
        elif tag == "td" and "data-key" in a:
            self.key, self.text = a["data-key"], ""

    def handle_data(self, data):
        if self.key:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "td" and self.key:
            self.cells[(self.table, self.row, self.key)] = self.text.strip()
            self.key = None


def f3(x):
    return f"{x:.3f}"


def pct(x):
    return f"{100 * x:.1f}%"


@pytest.mark.slow
def test_report_numbers_are_recomputed_from_the_mppc_tables(micro):
    work, _, cfg = micro
    root = work / cfg["results"]
    summary = json.loads((root / "report" / "summary.json").read_text())
    cells = Cells()
    cells.feed((root / "report" / "index.html").read_text())
    null = pd.read_csv(root / "mppc" / "cross_arch_null.csv.gz")["mppc"].dropna().to_numpy()
    null_p99 = np.percentile(null, 99)
    for name in cfg["comparisons"]:
        for direction, suffix, table_id in (("forward", "", "table-summary"), ("reverse", ".reverse", "table-reverse")):
            m = pd.read_csv(root / "mppc" / f"{name}{suffix}.csv.gz")["mppc"]
            v = m.dropna().to_numpy()
            want = {"features": len(m), "compared": len(v), "excluded": int(m.isna().sum()),
                    "mean": v.mean(), "median": np.median(v), "share_above_high": (v > 0.95).mean()}
            got = summary["comparisons"][name][direction]
            for key, value in want.items():
                assert got[key] == pytest.approx(value, abs=1e-12), (name, direction, key)
            page = {k: cells.cells[(table_id, name, k)] for k in want}
            assert page == {"features": str(want["features"]), "compared": str(want["compared"]),
                            "excluded": str(want["excluded"]), "mean": f3(want["mean"]),
                            "median": f3(want["median"]), "share_above_high": pct(want["share_above_high"])}
    # chance level: the permutation null, for the comparisons with the same A
    forward = pd.read_csv(root / "mppc" / "cross_arch.csv.gz")["mppc"].dropna().to_numpy()
    chance = summary["comparisons"]["cross_arch"]["chance"]
    assert chance["mean"] == pytest.approx(null.mean()) and chance["p99"] == pytest.approx(null_p99)
    assert chance["share_above_p99"] == pytest.approx((forward > null_p99).mean())
    assert cells.cells[("table-summary", "cross_arch", "chance_mean")] == f3(null.mean())
    # each cross-architecture pair minus model seed, paired on the same features of A (issue 14: both pairs)
    y = pd.read_csv(root / "mppc" / "model_seed.csv.gz").set_index(["layer", "feature"])["mppc"]
    assert [(g["cross"], g["skyline"]) for g in summary["differences"]] == [("cross_arch", "model_seed"),
                                                                             ("cross_arch_rwkv", "model_seed")]
    for got in summary["differences"]:
        x = pd.read_csv(root / "mppc" / f"{got['cross']}.csv.gz").set_index(["layer", "feature"])["mppc"]
        d = (x - y.reindex(x.index)).dropna().to_numpy()
        assert got["paired"] == len(d) and got["mean"] == pytest.approx(d.mean())
        assert got["p5"] == pytest.approx(np.percentile(d, 5)) and got["p95"] == pytest.approx(np.percentile(d, 95))
        assert got["share_near_zero"] == pytest.approx((np.abs(d) < 0.05).mean())
        assert summary["pairs"][got["cross"]]["difference"] == got
        row = f"{got['cross']}-model_seed"
        assert [cells.cells[("table-difference", row, k)] for k in ("p5", "p95", "share_near_zero")] == \
            [f3(np.percentile(d, 5)), f3(np.percentile(d, 95)), pct((np.abs(d) < 0.05).mean())]
        assert cells.cells[("table-pairs", got["cross"], "difference_mean")] == f"{d.mean():+.3f}"
    # complexity: Spearman correlation of MPPC with the token share, recomputed by ranks
    comp = pd.read_csv(root / "report" / "complexity" / "neox-s0" / "seed0.csv.gz")
    joined = comp.merge(pd.read_csv(root / "mppc" / "cross_arch.csv.gz"), on=["layer", "feature"]).dropna(
        subset=["mppc", "token_share"])
    rho = np.corrcoef(joined["token_share"].rank(), joined["mppc"].rank())[0, 1]
    assert summary["complexity"]["neox-s0/0"]["cross_arch"]["token_share"]["spearman"] == pytest.approx(rho)
    assert cells.cells[("table-complexity", "cross_arch", "rho_token_share")] == f"{rho:+.3f}"


CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
  const empty = [...document.querySelectorAll("table")].filter(
    t => t.tBodies.length === 0 || t.tBodies[0].rows.length === 0 ||
         [...t.tBodies[0].rows].some(r => [...r.cells].some(c => c.textContent.trim() === ""))).map(t => t.id);
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({images: document.images.length, broken: broken,
                                    tables: document.querySelectorAll("table").length, empty: empty});
  document.body.appendChild(out);
});
</script>
"""


def chromium(*args, cwd):
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: apt-get install -y chromium (Debian), as .ci/run does")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def render_check(page: Path, tmp_path: Path) -> dict:
    """Load a copy of ``page`` (same folder, so relative image paths resolve) with a check script."""
    html = page.read_text()
    probe = page.with_name(f".render-check-{tmp_path.name}.html")
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        proc = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), cwd=tmp_path)
    finally:
        probe.unlink()
    marker = '<pre id="render-check">'
    assert marker in proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.split(marker, 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))


def assert_renders(page: Path, tmp_path: Path, n_figures: int) -> None:
    check = render_check(page, tmp_path)
    assert check["images"] == n_figures and check["broken"] == [], check
    assert check["tables"] >= 3 and check["empty"] == [], check
    shot = tmp_path / "shot.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1400,6000", page.as_uri(), cwd=tmp_path)
    assert shot.exists(), proc.stderr[-3000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (6000, 1400)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, "the screenshot is (nearly) blank"


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(micro, tmp_path):
    work, _, cfg = micro
    root = work / cfg["results"]
    plan = report_plan(validate(cfg))
    # the MPPC figures, plus the circuits stage's figures (inlined) in their own section
    circuits = json.loads((root / "circuits" / "summary.json").read_text())
    n_images = len(plan["figures"]) + len(circuits["figures"])
    n_images += 1 if sweep_entries(validate(cfg)) else 0  # issue 19: the SAE-invariance sweep's figure
    n_images += 2  # issue 18: report_measures' two depth maps
    n_images += 2 if judge_plan(validate(cfg))["sources"] else 0  # issue 17: the judge's Figs. 5a and 5b
    assert len(circuits["figures"]) >= 3 and 'id="circuits"' in (root / "report" / "index.html").read_text()
    assert_renders(root / "report" / "index.html", tmp_path, n_images)
    # the page references its figures relatively: a copied report folder still works
    moved = tmp_path / "moved"
    shutil.copytree(root / "report", moved)
    assert_renders(moved / "index.html", tmp_path, n_images)


@pytest.mark.slow
def test_snakemake_report_has_every_figure_with_its_caption(repo, micro, tmp_path):
    work, config, cfg = micro
    out = tmp_path / "snakemake-report.zip"
    snakemake(repo, work, "--report", str(out), "--configfile", str(config))
    import zipfile

    archive = zipfile.ZipFile(out)
    names = archive.namelist()
    page = archive.read(next(n for n in names if n.endswith("report.html"))).decode()
    for fig in report_plan(validate(cfg))["figures"]:
        assert any(n.endswith(f"/{fig}.png") for n in names), (fig, names)
        caption = (repo / "report" / "captions" / f"{fig}.rst").read_text().split()
        assert " ".join(caption[:4]) in page, fig

