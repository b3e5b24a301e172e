"""benchmarks/job_times.py on a planted DAG: per-rule sums, critical path, 2-core list schedule."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("job_times", ROOT / "benchmarks" / "job_times.py")
job_times = importlib.util.module_from_spec(_spec)
sys.modules["job_times"] = job_times  # dataclasses look their module up there
_spec.loader.exec_module(job_times)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _job(rule, jobid, inputs, outputs, wildcards=None, threads=1):
    lines = ["[Tue Dec  1 23:13:23 2026]", f"rule {rule}:"]
    if inputs:
        lines.append(f"    input: {', '.join(inputs)}")
    lines += [f"    output: {', '.join(outputs)}", f"    jobid: {jobid}",
              f"    benchmark: bench/{rule}/{jobid}.tsv"]
    if wildcards:
        lines.append(f"    wildcards: {wildcards}")
    if threads > 1:
        lines.append(f"    threads: {threads}")
    return lines + ["Shell command: None", ""]


def _planted(tmp_path, cpu):
    """a -> b (an input inside a's directory output), a -> c, {b, c} -> d."""
    log = (_job("a", 1, [], ["out/a"]) + _job("b", 2, ["out/a/L0.zarr"], ["out/b"], "model=x")
           + _job("c", 3, ["out/a"], ["out/c"], "model=y") + _job("d", 4, ["out/b", "out/c"], ["out/d"]))
    (tmp_path / "run.log").write_text("\n".join(log))
    for rule, jobid in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        f = tmp_path / "bench" / rule / f"{jobid}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(HEADER + f"{cpu[rule] + 1}\t0:00:01\t100\t0\t0\t0\t0\t0\t0\t{cpu[rule]}\n")
    return tmp_path / "run.log"


def test_schedule_of_a_planted_dag(tmp_path):
    log = _planted(tmp_path, {"a": 10.0, "b": 20.0, "c": 5.0, "d": 1.0})
    jobs = job_times.parse_log(str(log))
    job_times.attach_times(jobs, str(tmp_path), {})
    assert [j.source for j in jobs] == ["benchmark"] * 4
    deps = job_times.dependencies(jobs)
    assert deps == {1: set(), 2: {1}, 3: {1}, 4: {2, 3}}
    assert [j.rule for j in job_times.critical_path(jobs, deps, 2)] == ["a", "b", "d"]
    makespan, start = job_times.list_schedule(jobs, deps, 2)
    assert makespan == 31.0 and start[2] == start[3] == 10.0 and start[4] == 30.0
    one_core, _ = job_times.list_schedule(jobs, deps, 1)
    assert one_core == 36.0  # one core: the sum


def test_assumed_and_missing_times(tmp_path):
    log = _planted(tmp_path, {"a": 10.0, "b": 20.0, "c": 5.0, "d": 1.0})
    (tmp_path / "bench" / "c" / "3.tsv").unlink()
    jobs = job_times.parse_log(str(log))
    job_times.attach_times(jobs, str(tmp_path), job_times.parse_assume(["b:model=x=7"]))
    by_rule = {j.rule: j for j in jobs}
    assert by_rule["b"].cpu == 7.0 and by_rule["b"].source == "assumed"
    assert by_rule["c"].cpu == 0.0 and by_rule["c"].source == "missing"
    text = job_times.report(jobs, 2)
    assert "list schedule on 2 cores: 18 s" in text  # a 10, then b 7 beside c 0, then d 1
