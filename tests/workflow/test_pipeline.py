"""The micro preset end to end, then lineage: what a config change makes Snakemake plan."""
import copy
import re
import subprocess
import sys

import pytest
import yaml
from conftest import snakemake  # the micro fixture is session-wide, in conftest.py

pytestmark = pytest.mark.slow


def planned_jobs(repo, workdir, configfile):
    """{rule: count} that a dry run plans (empty when nothing is to be done)."""
    out = snakemake(repo, workdir, "-n", "--configfile", str(configfile)).stdout
    counts = {}
    if "Job stats:" not in out:
        assert "Nothing to be done" in out, out
        return counts
    table = out.split("Job stats:", 1)[1].splitlines()
    for line in table[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_micro_pipeline_outputs(micro):
    import json

    from universality.core import store

    work, _, cfg = micro
    root = work / cfg["results"]
    for name, spec in cfg["models"].items():
        metrics = json.loads((root / "models" / f"{name}.json").read_text())
        assert metrics["eval_loss_nats"] > 0 and metrics["unigram_entropy_nats"] > 0
        assert (root / "models" / name / "config.json").exists()
        for site in cfg["activations"]["sites"]:
            manifest = json.loads((root / "activations" / name / f"{site}.json").read_text())
            assert sorted(map(int, manifest["layers"])) == list(range(spec["n_layers"]))
            arr = store.open_array(root / "activations" / name / site / "L0.zarr")
            n = cfg["activations"]["eval_tokens"] + (cfg["activations"]["sae_tokens"] if site == "resid" else 0)
            assert arr.shape[0] == n
    for name, spec in cfg["models"].items():
        for layer in range(spec["n_layers"]):
            m = json.loads((root / "saes" / name / "resid" / f"L{layer}" / "seed0" / "metrics.json").read_text())
            assert 0 < m["explained_variance"] <= 1 and m["ce_loss"]["clean"] > 0
    for comp in cfg["comparisons"]:
        summary = json.loads((root / "mppc" / f"{comp}.json").read_text())
        assert summary["forward"]["features"] > 0 and -1 <= summary["forward"]["mean_mppc"] <= 1
    assert not list(root.rglob("*.tmp-*")), "a temporary output was left behind"


def test_nothing_to_do_after_a_run(repo, micro):
    work, config, _ = micro
    assert planned_jobs(repo, work, config) == {}


def report_jobs(cfg, touched, models):
    """The report's jobs that rerun when the comparisons ``touched`` and the SAEs of ``models`` change."""
    from universality.workflow.config import report_plan, validate
    from universality.workflow.judge import judge_plan

    plan = report_plan(validate(cfg))
    jobs = {"report_figures": 1, "report_page": 1,
            "report_sae": 1 if models else 0,  # issue 19: the SAE quality table reads every SAE's metrics
            "report_cards": len(set(plan["cards"]) & set(touched)),
            "report_complexity": sum(m in models for m, _ in plan["complexity"])}
    # issue 17: a source's sample (and so its scores) follows its stratifying MPPC table and its
    # SAEs; the judge's report reads every comparison of every source
    sources = judge_plan(validate(cfg))["sources"]
    resampled = sum(s["stratify"] in touched or s["model"] in models for s in sources)
    jobs.update(judge_contexts=resampled, judge_scores=resampled,
                report_judge=int(any(set(s["comparisons"]) & set(touched) for s in sources) or resampled > 0))
    return {k: v for k, v in jobs.items() if v}


def measure_jobs(touched: dict, sae_changed: bool) -> dict:
    """The measures beside MPPC that rerun when the comparisons ``touched`` change (issue 18):
    depth and matching of each, SVCCA / RSA of the main SAE ones, CKA (residual streams) of the
    main SAE ones between two models only when the models themselves changed, and
    report_measures."""
    main = {k: c for k, c in touched.items() if c.get("shift", 0) == 0 and c["kind"] == "sae"}
    cka = 0 if sae_changed else sum(c["a"] != c["b"] for c in main.values())
    jobs = {"depth": len(touched), "matching": len(touched), "svcca_rsa": len(main), "cka": cka,
            "report_measures": 1}
    return {k: v for k, v in jobs.items() if v}


def test_changing_one_seed_reruns_that_model_only(repo, micro, tmp_path):
    work, _, cfg = micro
    cfg = copy.deepcopy(cfg)
    cfg["models"]["neox-s1"]["seed"] = 7
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    n_sites = len(cfg["activations"]["sites"])
    layers = cfg["models"]["neox-s1"]["n_layers"]
    # every comparison that reads neox-s1, and its layer pairs
    touched = {k: c for k, c in cfg["comparisons"].items() if "neox-s1" in (c["a"], c["b"])}
    pairs = sum(cfg["models"][c["a"]]["n_layers"] * cfg["models"][c["b"]]["n_layers"] for c in touched.values())
    assert touched and planned_jobs(repo, work, changed) == {
        "train_model": 1, "activations": n_sites, "train_sae": layers, "features": layers,
        "pearson_pair": pairs, "mppc": len(touched), "all": 1, **report_jobs(cfg, touched, ["neox-s1"]),
        **measure_jobs(touched, sae_changed=False),
        "circuits_heads": 1, "circuits_summary": 1}  # issue 6: neox-s1's heads, then the summary
    out = snakemake(repo, work, "-n", "--configfile", str(changed)).stdout
    assert "wildcards: model=neox-s1" in out and "model=neox-s0" not in out and "model=mamba-s0" not in out


def test_changing_l1_of_one_mamba_layer_reruns_its_descendants_only(repo, micro, tmp_path):
    work, _, cfg = micro
    cfg = copy.deepcopy(cfg)
    cfg["saes"]["overrides"] = {"mamba-s0": {"1": {"l1": 3.0}}}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    touched = {k: c for k, c in cfg["comparisons"].items() if c["kind"] == "sae" and "mamba-s0" in (c["a"], c["b"])}
    # the SAE, its features, one layer pair per A layer of each comparison reading it, the reductions
    pairs = sum(cfg["models"][c["a"]]["n_layers"] for c in touched.values())
    assert planned_jobs(repo, work, changed) == {
        "train_sae": 1, "features": 1, "pearson_pair": pairs, "mppc": len(touched), "all": 1,
        **report_jobs(cfg, touched, ["mamba-s0"]), **measure_jobs(touched, sae_changed=True)}
    out = snakemake(repo, work, "-n", "--configfile", str(changed)).stdout
    assert re.search(r"wildcards: model=mamba-s0, site=resid, layer=1, seed=0", out), out


def test_changing_the_judge_reruns_only_its_scores_and_what_reads_them(repo, micro, tmp_path):
    """issue 17: another judge (or judge option) -> new scores, the judge's report, the page."""
    work, _, cfg = micro
    cfg = copy.deepcopy(cfg)
    local = dict(cfg.get("judge", {}))
    cfg["judge"] = {**local, "kind": "openai", "model": "scripted", "base_url": "http://127.0.0.1:9/v1"}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))  # keep the comparisons' order
    assert planned_jobs(repo, work, changed) == {"judge_scores": 1, "report_judge": 1, "report_page": 1, "all": 1}
    cfg["judge"] = {**local, "timeout": 5.0}  # the local judge, another option
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))  # keep the comparisons' order
    assert planned_jobs(repo, work, changed) == {"judge_scores": 1, "report_judge": 1, "report_page": 1, "all": 1}


def test_micro_judge_scores(micro):
    """issue 17: the offline judge scored the micro run's sample; lineage in every row."""
    import json

    import pandas as pd

    from universality.report.judge.prompts import prompt_hash

    work, _, cfg = micro
    root = work / cfg["results"] / "report" / "judge"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["judge"] == "local-smollm2-135m-instruct.q4-1" and summary["weak"]
    src = summary["sources"][0]
    manifest = json.loads((root / "scores" / summary["judge"] / "appE-v1" / src["model"] / f"seed{src['seed']}.json").read_text())
    tables = [pd.read_csv(root / "scores" / summary["judge"] / "appE-v1" / src["model"] / f"seed{src['seed']}" / f)
              for f in manifest["files"]]
    t = pd.concat(tables)
    assert len(t) == src["features"] == manifest["features"] >= 3
    assert (t["prompt_hash"] == prompt_hash("appE-v1")).all()
    for s in ("complexity", "monosemanticity"):
        assert t[s].between(1, 5).all() and t[f"{s}_argmax"].between(1, 5).all()
        assert (t[f"{s}_source"] == "next-token").all() and t[f"{s}_digit_mass"].between(0, 1).all()
    assert set(src["comparisons"]) == {"cross_arch", "cross_arch_rwkv", "model_seed", "sae_seed", "random_init"}
    assert src["comparisons"]["random_init"]["role"] == "control"  # issue 14: untrained, not a skyline
    assert src["proxy"]["token_share"]["n"] == len(t)
    cache = work / cfg["results"] / "report" / "judge" / "cache" / summary["judge"] / src["model"] / f"seed{src['seed']}.jsonl"
    assert len(cache.read_text().splitlines()) == 2 * len(t)


def test_lint_is_clean(repo):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_micro_circuits_outputs(micro):
    """issue 6: every analysed model has its tables, the summary states the findings and figures."""
    import json

    import pandas as pd

    work, _, cfg = micro
    root = work / cfg["results"] / "circuits"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["primary"] == {"mamba": "mamba-s0", "gpt_neox": "neox-s0", "rwkv": "rwkv-s0"}
    assert set(summary["gpt_neox"]) == {"neox-s0", "neox-s1"} and len(summary["findings"]) == 4
    state = pd.read_csv(root / "mamba-s0" / "state.csv")
    assert sorted(state.distance.unique()) == cfg["circuits"]["distances"]
    assert sorted(state.layer.unique()) == list(range(cfg["models"]["mamba-s0"]["n_layers"]))
    assert summary["mamba"]["mamba-s0"]["key_layer"] in set(state.layer)
    heads = pd.read_csv(root / "neox-s0" / "head_patching.csv")
    assert len(heads) == len(cfg["circuits"]["distances"]) * 2 * cfg["models"]["neox-s0"]["n_heads"] * 2
    for fig in summary["figures"]:
        assert (work / fig["path"]).stat().st_size > 10_000 and fig["caption"]


def test_changing_one_sweep_variant_reruns_that_variant_only(repo, micro, tmp_path):
    """Issue 19: a variant's recipe defines its SAE, features, pair and table, then the SAE section
    and the page; the base SAE, the other variants and the comparisons stay."""
    work, _, cfg = micro
    cfg = copy.deepcopy(cfg)
    first = sorted(cfg["sae_sweep"]["variants"])[0]
    cfg["sae_sweep"]["variants"][first]["lr"] = 1.0e-3
    changed = tmp_path / "changed.yaml"
    # key order kept: a sorted dump reorders `comparisons`, which changes report_figures' plan param
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the first variant by name is also the null's B side
    entries = 1 + (cfg["sae_sweep"].get("null_shift", 0) > 0)
    assert planned_jobs(repo, work, changed) == {
        "train_sae_variant": 1, "sweep_features": 1, "sweep_pair": entries, "sweep_mppc": entries,
        "report_sae": 1, "report_page": 1, "all": 1}


@pytest.mark.slow
def test_moving_the_project_reruns_nothing(repo, micro, tmp_path):
    """Issue 20: the project (source tree and results, their relative layout kept, as when the
    folder holding both moves) plans no job: no absolute path in any job's inputs or params."""
    import os
    import shutil
    import subprocess

    from pathlib import Path

    work, config, _ = micro
    common = Path(os.path.commonpath([repo.resolve(), work.resolve()]))
    moved_root = tmp_path / "elsewhere"
    moved = moved_root / repo.resolve().relative_to(common)
    moved_work = moved_root / work.resolve().relative_to(common)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (repo / f).is_file():
            (moved / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, moved / f)
    shutil.copytree(work, moved_work, symlinks=True)
    assert planned_jobs(moved, moved_work, moved_work / config.name) == {}
