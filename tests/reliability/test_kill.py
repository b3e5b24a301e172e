"""kill -9 then rerun = identical outputs; leftovers of killed writes removed when a rule starts."""
import gzip
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from universality.core import store
from universality.core.cli import clean_outputs
from universality.sae.config import SAETrainConfig
from universality.sae.model import WEIGHTS_FILENAME
from universality.sae.train import train_sae

CFG = SAETrainConfig(expansion=2, l1=0.5, lr=3e-3, batch_size=50, train_tokens=50 * 16, buffer_tokens=200,
                     checkpoint_every=4, log_every=4, lr_decay=0.0, ce_windows=0)


def _env():
    import universality
    root = os.path.dirname(os.path.dirname(os.path.abspath(universality.__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_sigkill_mid_training_then_rerun_gives_identical_files(work, tmp_path):
    out = tmp_path / "sae"
    code = ("import os, signal\nfrom universality.sae.config import SAETrainConfig\n"
            "from universality.sae.train import train_sae\n"
            "def hook(step):\n    if step == 10: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"train_sae({str(work / 'L0.zarr')!r}, {str(out)!r}, {CFG!r}, on_step=hook, progress=False, num_threads=1)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    m = train_sae(work / "L0.zarr", out, CFG, progress=False, num_threads=1)
    assert m["training"]["resumed_from_step"] == 8
    train_sae(work / "L0.zarr", tmp_path / "clean", CFG, progress=False, num_threads=1)
    assert (out / WEIGHTS_FILENAME).read_bytes() == (tmp_path / "clean" / WEIGHTS_FILENAME).read_bytes()
    assert (out / "cfg.json").read_bytes() == (tmp_path / "clean" / "cfg.json").read_bytes()


def test_stale_temporaries_of_dead_writers_are_removed_at_rule_start(tmp_path):
    final = tmp_path / "features" / "L0.zarr"
    code = ("import os, signal\nfrom universality.core import store\n"
            f"with store.atomic_output({str(final)!r}) as tmp:\n"
            "    tmp.mkdir(); (tmp / 'big').write_bytes(b'x' * 1000); os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = list(final.parent.glob("L0.zarr.tmp-*"))
    assert len(left) == 1
    live = final.parent / f"L0.zarr.tmp-{os.getpid()}"  # a writer that is alive: kept
    live.mkdir()
    other = final.parent / "L1.zarr.tmp-999999999"  # another output's leftover: not this job's
    other.mkdir()
    clean_outputs([str(final)])
    assert not left[0].exists() and live.exists() and other.exists()


def test_csv_gz_is_byte_reproducible(tmp_path):
    t = pd.DataFrame({"layer": [0, 1], "mppc": [0.5, float("nan")]})
    store.write_csv_gz(tmp_path / "a.csv.gz", t)
    time.sleep(1.1)
    os.makedirs(tmp_path / "b")
    store.write_csv_gz(tmp_path / "b" / "other-name.csv.gz", t)
    a, b = (tmp_path / "a.csv.gz").read_bytes(), (tmp_path / "b" / "other-name.csv.gz").read_bytes()
    assert a == b and a[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert not a[3] & 0x08  # FNAME flag off: no file name in the header
    pd.testing.assert_frame_equal(pd.read_csv(gzip.open(tmp_path / "a.csv.gz")), t)


def test_compare_trees_tells_timing_from_content(tmp_path):
    from tests.reliability.compare_trees import compare
    for name, wall, val in (("a", 1.0, 0.5), ("b", 2.0, 0.5)):
        d = tmp_path / name / "saes"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(f'{{"training": {{"wall_s": {wall}}}, "ev": {val}}}')
        (d / "w.bin").write_bytes(b"same")
    (tmp_path / "b" / "saes" / "x.json").write_text("{}")
    res = compare(tmp_path / "a", tmp_path / "b")
    assert res["timing_only"] == ["saes/metrics.json"] and res["identical"] == ["saes/w.bin"]
    assert res["only_b"] == ["saes/x.json"]
    (tmp_path / "b" / "saes" / "metrics.json").write_text('{"training": {"wall_s": 2.0}, "ev": 0.6}')
    assert compare(tmp_path / "a", tmp_path / "b")["different"] == ["saes/metrics.json"]


def test_full_disk_leaves_no_complete_looking_output(tmp_path):
    """ENOSPC in the middle of a write: neither the output nor its temporary remains."""
    import errno
    import pytest

    final = tmp_path / "features" / "L0.zarr"
    with pytest.raises(OSError, match="No space"):
        with store.atomic_output(final, sealed=True) as tmp:
            tmp.mkdir()
            (tmp / "part").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not final.exists() and list(final.parent.iterdir()) == []


def test_no_pickle_and_no_remote_code_in_the_package():
    """Static: nothing in the package or the scripts unpickles or runs a checkpoint's code."""
    import re
    from pathlib import Path
    import universality
    root = Path(universality.__file__).parents[1]
    bad = re.compile(r"import pickle|pickle\.load|allow_pickle=True|trust_remote_code=True|torch\.load\((?!weights_only=True)")
    hits = [f"{p}:{i}" for p in [*root.joinpath("universality").rglob("*.py"), *root.joinpath("scripts").glob("*.py")]
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line) and "``" not in line]
    assert not hits, hits
