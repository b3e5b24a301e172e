"""A real SLURM run: a throwaway single-node cluster runs a sub-DAG of the micro preset through
``--profile profiles/slurm``, and its outputs equal those of a local run.

The cluster is Debian's Slurm 22.05 (slurmctld, slurmd, slurm-client) and munge, started here as
root and always stopped by PID (.ci/run installs the packages). Two facts found by trying:
- without accounting ``sacct`` fails and the executor would wait forever; it has to query
  ``squeue`` (``slurm-status-command: squeue``), which it only trusts when MinJobAge >= 3 x
  ``slurm-init-seconds-before-status-checks``;
- the executor strips ``SLURM_*`` variables inside jobs (``SLURM_CONF`` too), so ``srun`` inside a
  job finds the config only at ``/etc/slurm/slurm.conf``: the fixture puts it there and restores
  whatever was there before.

Sub-DAG: the micro preset up to the two SAEs of ``neox-s0`` (seed 0): documents, tokenizer, both
token sets, training ``neox-s0``, its resid activations and two SAEs: 9 jobs (token_budget included); each SLURM
step costs ~15-20 s of submission and polling on top of its work.
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
REQUIRED_COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "sinfo")
TARGETS = ["saes/neox-s0/resid/L0/seed0", "saes/neox-s0/resid/L1/seed0"]
SMALL = {"mem_mb": 1500, "runtime": 15, "cpus_per_task": 2, "slurm_partition": "ci"}


def ci_profile() -> dict:
    """The CI layer over profiles/slurm: squeue for status, no account, no GPU on this node.

    A later profile replaces whole top-level keys: ``set-resources`` here replaces the
    paper-sized requests (GPUs, tens of GB) that this node could never schedule.
    """
    paper = yaml.safe_load((REPO / "profiles" / "slurm" / "profile.yaml").read_text())
    return {
        "jobs": 4,
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 5,   # MinJobAge 300 >= 3 x 5
        "slurm-no-account": True,
        "default-resources": SMALL,
        "set-resources": {rule: {**SMALL, "gpu": 0} for rule in paper["set-resources"]},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} not ready after {timeout} s\n{tails}")


class Cluster:
    """munged + slurmctld + slurmd in ``root``, each a child process stopped by its PID."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.saved_conf: bytes | None = None
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self):
        r, host = self.root, socket.gethostname().split(".")[0]
        for d in ("munge", "sock", "state", "spool", "log"):
            (r / d).mkdir()
        (r / "sock").chmod(0o755)  # munge clients (slurm) must traverse the socket's folder
        key = r / "munge" / "munge.key"
        subprocess.run(["mungekey", "-c", "-k", str(key), "-b", "1024"], check=True)
        key.chmod(0o600)
        sock = r / "sock" / "munge.socket"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={r / 'munge' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'seed'}",
                               f"--log-file={r / 'log' / 'munged.log'}"])
        _wait(sock.exists, 20, "munged", [r / "log" / "munged.out"])
        cpus = os.cpu_count() or 2
        # Rules ask for their own mem_mb (train_model: 6000): offer what the machine has.
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        self.conf.write_text("\n".join([
            "ClusterName=ci", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt", f"JobCompLoc={r / 'log' / 'jobcomp.txt'}",
            "MinJobAge=300", "ReturnToService=2",
            f"NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            "PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        # Jobs lose SLURM_CONF (the executor strips SLURM_* inside jobs): srun reads /etc/slurm.
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        if SYSTEM_CONF.exists():
            self.saved_conf = SYSTEM_CONF.read_bytes()
        shutil.copyfile(self.conf, SYSTEM_CONF)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D"])
        _wait(self._node_idle, 60, "the SLURM node",
              [r / "log" / n for n in ("slurmctld.out", "slurmd.out", "slurmctld.log", "slurmd.log")])

    def _spawn(self, name: str, cmd: list[str]):
        out = open(self.root / "log" / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env))

    def _node_idle(self) -> bool:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
        return p.returncode == 0 and p.stdout.strip() == "idle"

    def stop(self):
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.saved_conf is not None:
            SYSTEM_CONF.write_bytes(self.saved_conf)
        elif SYSTEM_CONF.exists():
            SYSTEM_CONF.unlink()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [d for d in REQUIRED_COMMANDS if shutil.which(d) is None]
    if missing or os.geteuid() != 0:
        pytest.fail(
            f"the SLURM test needs root and Debian's slurmctld slurmd slurm-client munge packages "
            f"(missing: {missing or 'root'}); .ci/run installs them: "
            "apt-get install -y slurmctld slurmd slurm-client munge")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("the SLURM test needs snakemake-executor-plugin-slurm (pip install -e '.[test]')")
    # A short path: a munge socket path must fit in sun_path (108 bytes).
    root = Path(tmp_path_factory.mktemp("slurm"))
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def run_snakemake(work: Path, *args, env=None):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        logs = sorted(work.glob(".snakemake/slurm_logs/**/*.log"))
        tails = "\n".join(f"--- {p}:\n{p.read_text()[-1500:]}" for p in logs[-3:])
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{tails}")
    return proc


def micro_workdir(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    work = tmp_path / name
    work.mkdir()
    cfg = yaml.safe_load((REPO / "presets" / "micro.yaml").read_text())
    (work / "micro.yaml").write_text(yaml.safe_dump(cfg))
    return work, [str(Path(cfg["results"]) / t) for t in TARGETS]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every output file; JSON compared without wall-clock fields, logs and the jobs'
    benchmark records (wall and CPU seconds) skipped."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith(("logs/", "benchmarks/")) or p.name == ".snakemake_timestamp":
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_timeless(json.loads(data)), sort_keys=True).encode()
        elif p.name == "train_log.jsonl":
            data = json.dumps([_timeless(json.loads(l)) for l in data.splitlines() if l.strip()]).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def _timeless(obj):
    """``obj`` without wall-clock measurements (keys ``seconds`` and ``*_s``: tokens_per_s, wall_s...)."""
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if not (k == "seconds" or k.endswith("_s"))}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def test_micro_sub_dag_through_slurm_equals_the_local_run(cluster, tmp_path):
    local, targets = micro_workdir(tmp_path, "local")
    run_snakemake(local, *targets, "--cores", "2", "--configfile", str(local / "micro.yaml"))

    remote, _ = micro_workdir(tmp_path, "slurm")
    layer = tmp_path / "ci-profile"
    layer.mkdir()
    (layer / "profile.yaml").write_text(yaml.safe_dump(ci_profile()))
    start = time.monotonic()
    proc = run_snakemake(remote, *targets, "--profile", str(REPO / "profiles" / "slurm"),
                         "--profile", str(layer), "--configfile", str(remote / "micro.yaml"),
                         env=cluster.env)
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    # Every job went through SLURM: sbatch job ids are logged, the job-completion log has them.
    submitted = log.count("has been submitted with SLURM jobid")
    assert submitted == 9, log[-3000:]
    completed = (cluster.root / "log" / "jobcomp.txt").read_text()
    assert completed.count("JobState=COMPLETED") >= 9, completed
    print(f"SLURM sub-DAG: {submitted} jobs in {elapsed:.0f} s")

    root = Path(yaml.safe_load((REPO / "presets" / "micro.yaml").read_text())["results"])
    want, got = tree_digest(local / root), tree_digest(remote / root)
    assert sorted(got) == sorted(want)
    differ = [k for k in want if want[k] != got[k]]
    assert not differ, f"outputs differ between the local and the SLURM run: {differ}"
    # The SAE weights (safetensors) are among the compared files, byte for byte.
    assert sum(k.endswith("sae_weights.safetensors") for k in want) == 2
