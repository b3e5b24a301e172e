"""Job times of a pipeline run per rule, and the ideal wall time on N cores from CPU seconds.

Every rule writes a Snakemake ``benchmark:`` record (``results/benchmarks/<rule>/<wildcards>.tsv``:
wall ``s``, ``cpu_time``, ``max_rss`` in MiB). This tool reads the jobs and their files from a
Snakemake log -- the log of a real run (``.snakemake/log/*.snakemake.log``) or the output of a
dry run of the whole DAG (``snakemake -n -F --cores 2 > dry.txt``, which also covers jobs that
are not run yet) -- joins each job to its benchmark record, and prints

* per rule: jobs, CPU seconds (sum and largest job), wall seconds, largest max RSS;
* the critical path of the DAG in CPU seconds (edges: an input that is, or lies inside, another
  job's output) and the lower bound ``max(critical path, total CPU / cores)``;
* a list schedule on ``--cores`` cores (longest remaining path first; a job with ``threads: t``
  holds ``t`` cores for ``cpu / t`` seconds): the ideal wall time of this DAG on an idle machine.

Why CPU seconds: wall times on a shared machine (other processes on the same 2 cores) vary by
a third or more between runs; a job's CPU time is nearly independent of the load. The wall time
of a real run is at least the schedule printed here.

Jobs without a benchmark record take, in this order, ``--assume RULE[:WILDCARDS]=SECONDS``
(e.g. ``--assume train_model:model=rwkv-s0=400``), the wall seconds between the job's start and
finish lines in a real run's log (older runs without records), or the median CPU seconds of the
measured jobs of the same rule; the table marks how many of each rule's jobs are estimated.

    snakemake -n -F --cores 2 > /tmp/dry.txt
    python benchmarks/job_times.py /tmp/dry.txt                 # records under ./results
    python benchmarks/job_times.py .snakemake/log/<run>.snakemake.log --workdir /tmp/run
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import heapq
import os
import re
import statistics
from dataclasses import dataclass, field

_STAMP = re.compile(r"^\[(\w{3} \w{3}\s+\d+ \d\d:\d\d:\d\d \d{4})\]")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")


@dataclass
class Job:
    """One job of the DAG: its files, threads and measured (or estimated) seconds."""

    jobid: int
    rule: str
    wildcards: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    benchmark: str | None = None
    threads: int = 1
    started: dt.datetime | None = None
    log_wall: float | None = None
    cpu: float | None = None       # CPU seconds (user + system of the job's processes)
    wall: float | None = None      # wall seconds
    rss: float | None = None       # max RSS, MiB
    source: str = "missing"        # benchmark | assumed | log-wall | rule-median

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.wildcards}" if self.wildcards else self.rule


def _files(value: str) -> list[str]:
    return [f.strip() for f in value.split(", ") if f.strip()]


def parse_log(path: str) -> list[Job]:
    """Jobs of a Snakemake log (real run or dry run), in the order they appear."""
    jobs: dict[int, Job] = {}
    stamp, current, fields = None, None, {}

    def close():
        if current is not None and "jobid" in fields:
            jid = int(fields["jobid"])
            job = Job(jid, current, fields.get("wildcards", ""), _files(fields.get("input", "")),
                      _files(fields.get("output", "")), fields.get("benchmark"),
                      int(fields.get("threads", 1)), started=stamp)
            jobs.setdefault(jid, job)

    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if m := _STAMP.match(line):
                stamp = dt.datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
                continue
            if m := _RULE.match(line):
                close()
                current, fields = m.group(1), {}
                continue
            if m := _FINISHED.match(line):
                close()
                current, fields = None, {}
                job = jobs.get(int(m.group(1)))
                if job is not None and job.started is not None and stamp is not None:
                    job.log_wall = (stamp - job.started).total_seconds()
                continue
            if current is not None and line.startswith("    ") and ": " in line:
                key, value = line.strip().split(": ", 1)
                fields.setdefault(key, value)
            elif current is not None and not line.startswith("    "):
                close()
                current, fields = None, {}
    close()
    return [j for j in jobs.values() if j.rule != "all" or j.outputs]


def read_benchmark(path: str) -> dict[str, float] | None:
    """The last row of a Snakemake benchmark TSV as floats (``s``, ``cpu_time``, ``max_rss``, ...)."""
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return None
    out = {}
    for k, v in rows[-1].items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def parse_assume(items: list[str]) -> dict[str, float]:
    """``RULE[:WILDCARDS]=SECONDS`` options -> {key: seconds} (the key of :attr:`Job.key`)."""
    out = {}
    for item in items:
        key, _, sec = item.rpartition("=")
        if not key or not sec:
            raise SystemExit(f"--assume {item!r}: expected RULE[:WILDCARDS]=SECONDS")
        out[key] = float(sec)
    return out


def attach_times(jobs: list[Job], workdir: str, assume: dict[str, float],
                 earlier: dict[str, Job] | None = None) -> None:
    """Fill ``cpu`` / ``wall`` / ``rss`` / ``source`` of every job (see the module docstring);
    ``earlier``: jobs of another run by key, whose times fill jobs without a record here."""
    earlier = earlier or {}
    for j in jobs:
        rec = read_benchmark(os.path.join(workdir, j.benchmark)) if j.benchmark else None
        key = j.key.replace(", ", ",")
        if key in assume or j.rule in assume:
            j.cpu = j.wall = assume.get(key, assume.get(j.rule))
            j.source = "assumed"
        elif rec is None and key in earlier:
            e = earlier[key]
            j.cpu, j.wall, j.rss, j.source = e.cpu, e.wall, e.rss, f"earlier {e.source}"
        elif rec is not None and "cpu_time" in rec:
            j.cpu, j.wall, j.rss = rec["cpu_time"], rec.get("s"), rec.get("max_rss")
            j.source = "benchmark"
        elif j.log_wall is not None:
            j.wall = j.log_wall
            j.cpu = j.log_wall * j.threads  # an upper bound: the job held ``threads`` cores
            j.source = "log-wall"
    by_rule: dict[str, list[float]] = {}
    for j in jobs:
        if j.source in ("benchmark", "log-wall") or j.source.startswith("earlier"):
            by_rule.setdefault(j.rule, []).append(j.cpu)
    for j in jobs:
        if j.cpu is None:
            j.cpu = statistics.median(by_rule[j.rule]) if j.rule in by_rule else 0.0
            j.source = "rule-median" if j.rule in by_rule else "missing"


def dependencies(jobs: list[Job]) -> dict[int, set[int]]:
    """jobid -> jobids it waits for: an input equal to, or inside, another job's output."""
    producer = {os.path.normpath(o): j.jobid for j in jobs for o in j.outputs}
    deps: dict[int, set[int]] = {}
    for j in jobs:
        need = set()
        for f in j.inputs:
            p = os.path.normpath(f)
            while p and p not in producer and os.path.dirname(p) != p:
                p = os.path.dirname(p)
            if p in producer and producer[p] != j.jobid:
                need.add(producer[p])
        deps[j.jobid] = need
    return deps


def _duration(j: Job, cores: int) -> float:
    return j.cpu / max(1, min(j.threads, cores))


def bottom_levels(jobs: list[Job], deps: dict[int, set[int]], cores: int) -> dict[int, float]:
    """Longest path (seconds) from each job to the end of the DAG, the job included."""
    by_id = {j.jobid: j for j in jobs}
    children: dict[int, list[int]] = {j.jobid: [] for j in jobs}
    for jid, need in deps.items():
        for d in need:
            children[d].append(jid)
    level: dict[int, float] = {}

    def visit(jid):  # iterative post-order (deep DAGs would exceed Python's recursion limit)
        stack = [(jid, False)]
        while stack:
            n, done = stack.pop()
            if n in level:
                continue
            if done:
                level[n] = _duration(by_id[n], cores) + max((level[c] for c in children[n]), default=0.0)
                continue
            stack.append((n, True))
            stack.extend((c, False) for c in children[n] if c not in level)

    for j in jobs:
        visit(j.jobid)
    return level


def list_schedule(jobs: list[Job], deps: dict[int, set[int]], cores: int) -> tuple[float, dict[int, float]]:
    """Makespan of a greedy list schedule (highest bottom level first) and each job's start."""
    by_id = {j.jobid: j for j in jobs}
    level = bottom_levels(jobs, deps, cores)
    waiting = {jid: set(need) for jid, need in deps.items()}
    ready = [(-level[jid], jid) for jid, need in waiting.items() if not need]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # (finish time, jobid)
    free, now, start = cores, 0.0, {}
    while ready or running:
        deferred = []
        while ready:
            item = heapq.heappop(ready)
            need = min(by_id[item[1]].threads, cores)
            if need <= free:
                free -= need
                start[item[1]] = now
                heapq.heappush(running, (now + _duration(by_id[item[1]], cores), item[1]))
            else:
                deferred.append(item)
        for item in deferred:
            heapq.heappush(ready, item)
        now, done = heapq.heappop(running)
        free += min(by_id[done].threads, cores)
        for jid, need in waiting.items():
            if done in need:
                need.discard(done)
                if not need and jid not in start:
                    heapq.heappush(ready, (-level[jid], jid))
    return now, start


def critical_path(jobs: list[Job], deps: dict[int, set[int]], cores: int) -> list[Job]:
    """The jobs of the longest path, first to last."""
    by_id = {j.jobid: j for j in jobs}
    level = bottom_levels(jobs, deps, cores)
    children: dict[int, list[int]] = {j.jobid: [] for j in jobs}
    for jid, need in deps.items():
        for d in need:
            children[d].append(jid)
    roots = [jid for jid, need in deps.items() if not need]
    node = max(roots, key=level.get) if roots else None
    path = []
    while node is not None:
        path.append(by_id[node])
        node = max(children[node], key=level.get) if children[node] else None
    return path


def report(jobs: list[Job], cores: int) -> str:
    """The per-rule table and the schedule numbers as text."""
    rows: dict[str, list[Job]] = {}
    for j in jobs:
        rows.setdefault(j.rule, []).append(j)
    out = [f"{'rule':22s} {'jobs':>5s} {'CPU s':>8s} {'max job':>8s} {'wall s':>8s} {'max RSS':>8s}  estimated"]
    total = sum(j.cpu for j in jobs)
    for rule, js in sorted(rows.items(), key=lambda kv: -sum(j.cpu for j in kv[1])):
        walls = [j.wall for j in js if j.wall is not None]
        rss = [j.rss for j in js if j.rss is not None]
        est = sum(j.source != "benchmark" for j in js)
        out.append(f"{rule:22s} {len(js):5d} {sum(j.cpu for j in js):8.1f} {max(j.cpu for j in js):8.1f} "
                   f"{sum(walls):8.1f} {max(rss, default=float('nan')):8.0f}  "
                   + (f"{est} ({', '.join(sorted({j.source for j in js if j.source != 'benchmark'}))})"
                      if est else ""))
    deps = dependencies(jobs)
    path = critical_path(jobs, deps, cores)
    cp = sum(_duration(j, cores) for j in path)
    makespan, _ = list_schedule(jobs, deps, cores)
    out += ["", f"total CPU: {total:.0f} s over {len(jobs)} jobs",
            f"critical path: {cp:.0f} s ({' -> '.join(j.key for j in path)})",
            f"lower bound on {cores} cores: {max(cp, total / cores):.0f} s",
            f"list schedule on {cores} cores: {makespan:.0f} s ({makespan / 60:.1f} min)",
            f"largest job: {max(jobs, key=lambda j: j.cpu).key} {max(j.cpu for j in jobs):.0f} s"]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log", help="a Snakemake log of a run, or the output of `snakemake -n -F --cores N`")
    p.add_argument("--workdir", default=".", help="the run's working directory (benchmark paths are relative to it)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--assume", action="append", default=[], metavar="RULE[:WILDCARDS]=SECONDS",
                   help="CPU seconds of jobs without a record (e.g. a model not trained yet)")
    p.add_argument("--times-from", nargs=2, metavar=("LOG", "WORKDIR"),
                   help="another run (its log and working directory) whose job times fill the jobs "
                        "without a record (e.g. a dry run's DAG with a finished run's times)")
    args = p.parse_args(argv)
    jobs = parse_log(args.log)
    if not jobs:
        raise SystemExit(f"{args.log}: no jobs found (is it a Snakemake log or dry-run output?)")
    earlier = {}
    if args.times_from:
        before = parse_log(args.times_from[0])
        attach_times(before, args.times_from[1], {})
        earlier = {j.key.replace(", ", ","): j for j in before}
    attach_times(jobs, args.workdir, parse_assume(args.assume), earlier)
    print(report(jobs, args.cores))


if __name__ == "__main__":
    main()
