"""Compare two result trees byte for byte; list the files that differ only in timing fields.

    python -m tests.reliability.compare_trees RUN1/results-micro RUN2/results-micro

Timing fields (documented, the only allowed differences between two clean runs): the JSON / JSONL
keys in :data:`TIMING_KEYS`, at any depth (SAE ``metrics.json`` ``training.wall_s`` /
``tokens_per_s`` / ``loop_cpu_s``, ``train_log.jsonl`` ``elapsed_s``, ``models/{model}.json``
``seconds`` / ``tokens_per_s``).
``logs/`` (progress bars, times) and Snakemake's ``.snakemake_timestamp`` markers are not outputs
and are skipped. Exit status 1 if any other difference is found.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

#: Measured on two micro runs (issue 20): exactly these keys differ, in models/{model}.json
#: (``seconds``, ``tokens_per_s``), saes/.../metrics.json (``training.wall_s``, ``tokens_per_s``,
#: ``loop_cpu_s``) and saes/.../train_log.jsonl (``elapsed_s``).
TIMING_KEYS = frozenset({"wall_s", "tokens_per_s", "loop_cpu_s", "elapsed_s", "seconds"})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(".snakemake") and p.relative_to(root).parts[0] != "logs"}


def _timeless(obj):
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def _parse(path: Path):
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def compare(a: Path, b: Path) -> dict[str, list[str]]:
    """``{"identical", "timing_only", "different", "only_a", "only_b"}`` -> relative paths."""
    fa, fb = _files(a), _files(b)
    out = {"identical": [], "timing_only": [], "different": [], "only_a": sorted(fa - fb), "only_b": sorted(fb - fa)}
    for rel in sorted(fa & fb):
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if x == y:
            out["identical"].append(rel)
        elif rel.endswith((".json", ".jsonl")) and _timeless(_parse(a / rel)) == _timeless(_parse(b / rel)):
            out["timing_only"].append(rel)
        else:
            out["different"].append(rel)
    return out


def main(argv: list[str]) -> int:
    res = compare(Path(argv[0]), Path(argv[1]))
    print(f"{len(res['identical'])} files byte-identical, {len(res['timing_only'])} differ only in timing fields "
          f"({sorted(TIMING_KEYS)})")
    for key in ("timing_only", "different", "only_a", "only_b"):
        for rel in res[key]:
            print(f"  {key}: {rel}")
    return 1 if res["different"] or res["only_a"] or res["only_b"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
