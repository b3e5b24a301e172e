import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Tests share two cores with each other's torch pools: one thread each keeps timings sane.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo():
    return REPO


# --- the micro preset's run, shared by tests/workflow/test_pipeline.py and tests/report/test_report.py (one DAG run) ---


def snakemake(repo, workdir, *args, check=True):
    import subprocess

    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="session")
def micro(repo, tmp_path_factory):
    """(workdir, config file, config dict) of one complete run of presets/micro.yaml."""
    import yaml

    work = tmp_path_factory.mktemp("micro")
    config = work / "micro.yaml"
    config.write_text((repo / "presets" / "micro.yaml").read_text())
    snakemake(repo, work, "--cores", "2", "--configfile", str(config))
    return work, config, yaml.safe_load(config.read_text())


def make_tokens(path, n_windows: int, seed: int, vocab: int, max_len: int) -> str:
    """A small token-set Zarr group like ``tokens/{split}.zarr``: windows of random length with
    BOS (0) first; returns its path."""
    import numpy as np
    import zarr

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, max_len + 1, n_windows)
    wins = [np.r_[0, rng.integers(1, vocab, n - 1)] for n in lengths]
    g = zarr.open_group(str(path), mode="w", attributes={"bos_id": 0, "split": "x", "sha256": f"s{seed}",
                                                          "max_len": max_len, "vocab_size": vocab})
    g.create_array("ids", data=np.concatenate(wins).astype(np.int32), chunks=(64,))
    g.create_array("offsets", data=np.r_[0, np.cumsum(lengths)].astype(np.int64), chunks=(64,))
    from universality.core import integrity
    integrity.seal(path)  # as the tokens rule writes it
    return str(path)
