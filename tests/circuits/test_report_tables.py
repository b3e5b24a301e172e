"""The report's circuit tables: the paper's layout, intervals in every cell, the paper's numbers
beside ours for the paper's Mamba-130m."""
import numpy as np
import torch

from universality.circuits.effects import Effects
from universality.circuits.ssm_paths import paper_tables
from universality.report.circuits import circuit_tables


def test_paper_numbers_are_the_transcribed_app_g_tables():
    t = paper_tables()["tables"]
    assert sorted(t["state"]["values"], key=int) == ["8", "16", "32", "64", "128"]
    assert all(len(row) == 24 for row in t["state"]["values"].values())
    assert [t["state"]["values"][d]["17"] for d in ("8", "16", "32", "64", "128")] == [-9.65, -8.09, -8.73, -10.16, -8.44]
    assert [t["ssm_in"]["values"][d]["B1+1"] for d in ("8", "16", "32", "64", "128")] == [-9.69, -11.25, -16.84, -10.64, -9.13]
    assert t["conv_in_A'"]["values"]["8"]["A1"] == -8.27 and t["conv_in_B'"]["ocr_notes"]


def test_state_table_is_layer_by_distance_with_intervals_and_the_paper_beside(tmp_path):
    e = Effects(100)
    rng = np.random.default_rng(0)
    for d in (8, 16):
        clean = torch.from_numpy(rng.normal(size=10))
        for layer in range(24):
            e.add("state", {"distance": d, "layer": layer, "corruption": "B'"}, clean, clean - 3, clean - 0.01 * layer)
    path = tmp_path / "circuits" / "mamba-130m" / "state.csv"
    path.parent.mkdir(parents=True)
    e.table("state").to_csv(path, index=False)
    s = {"model": "mamba-130m", "key_layer": 17, "paper_reference": "mamba-130m"}
    summary = {"primary": {"mamba": "mamba-130m"}, "mamba": {"mamba-130m": s}, "tables": [str(path)]}
    (t,) = circuit_tables(summary, str(tmp_path))
    assert t["columns"] == ["layer", "d=8", "d=8 paper", "d=16", "d=16 paper"] and t["src"] == "circuits/mamba-130m/state.csv"
    row = t["rows"][17]
    assert row[0] == "L17" and row[1].startswith("-0.17 [") and row[2] == "-9.65" and row[4] == "-8.09"
    assert t["rows"][-1][0] == "full corruption"
    (plain,) = circuit_tables({**summary, "mamba": {"mamba-130m": {**s, "paper_reference": ""}}}, str(tmp_path))
    assert plain["columns"] == ["layer", "d=8", "d=16"]
