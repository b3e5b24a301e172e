"""Score tables of the judge: the answer cache, one row per feature, and what the report reads.

Lineage: a score file per (judge, prompt set, model, SAE seed, layer) (``ResultPaths.judge_scores``),
one row per scored feature: ``layer, feature, mppc, bin`` (the stratifying comparison's MPPC),
per score ``s`` in (complexity, monosemanticity): ``s`` (expected score, 1..5), ``s_argmax``,
``s_raw`` (the judge's answer text or most likely token), ``s_parsed``, ``s_source``,
``s_digit_mass``; and ``prompt_hash``, ``judge`` (the judge's slug).

The cache is a JSON-lines file outside the job's outputs (Snakemake deletes a failed job's
outputs, not this file): one line per answer, appended and flushed as it arrives, keyed by the
SHA-256 of the judge's identity and the full prompt. A killed job resumes without asking again;
a half-written last line is ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from universality.report.judge.base import Answer
from universality.report.judge.contexts import format_samples
from universality.report.judge.prompts import SCORES, full_prompt

#: MPPC below which the paper finds features uninterpretable (Sec. 5.2, App. F).
LOW_MPPC = 0.2


def answer_key(identity: dict, prompt: str) -> str:
    blob = json.dumps(identity, sort_keys=True) + "\0" + prompt
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """Answers on disk, appended as they arrive (``path``: a ``.jsonl`` file)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.answers: dict[str, Answer] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.answers[rec["key"]] = Answer.from_json(rec["answer"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a kill
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, answer: Answer) -> None:
        self.answers[key] = answer
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "answer": answer.to_json()}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def score_features(judge, features: list[dict], prompts: dict[str, str], cache: AnswerCache,
                   prompt_hash: str, judge_slug: str) -> pd.DataFrame:
    """Ask ``judge`` both prompts for every feature (cached answers reused); one row per feature.

    ``features``: :func:`universality.report.judge.contexts.gather` records.
    """
    asks = [(i, s, full_prompt(prompts[s], format_samples(f))) for i, f in enumerate(features) for s in SCORES]
    keys = [answer_key(judge.identity, text) for _, _, text in asks]
    todo = [j for j, k in enumerate(keys) if k not in cache.answers]
    print(f"judge {judge_slug}: {len(asks)} prompts, {len(asks) - len(todo)} cached, {len(todo)} to ask")
    if todo:
        judge.answer([asks[j][2] for j in todo], on_answer=lambda i, a: cache.add(keys[todo[i]], a))
    rows = []
    for i, f in enumerate(features):
        row = {"layer": f["layer"], "feature": f["feature"], "mppc": f["mppc"], "bin": f["bin"]}
        for s in SCORES:
            a = cache.answers[keys[2 * i + SCORES.index(s)]]
            row.update({s: a.expected, f"{s}_argmax": a.argmax, f"{s}_raw": a.raw, f"{s}_parsed": a.parsed,
                        f"{s}_source": a.source, f"{s}_digit_mass": a.digit_mass})
        rows.append(row)
    table = pd.DataFrame(rows, columns=score_columns()[:-2] if not rows else None)
    return table.assign(prompt_hash=prompt_hash, judge=judge_slug)


def score_columns() -> list[str]:
    cols = ["layer", "feature", "mppc", "bin"]
    for s in SCORES:
        cols += [s, f"{s}_argmax", f"{s}_raw", f"{s}_parsed", f"{s}_source", f"{s}_digit_mass"]
    return cols + ["prompt_hash", "judge"]


def read_scores(paths: list[str]) -> pd.DataFrame:
    """The score files of one (judge, prompt set, model, seed), concatenated; checks the columns."""
    tables = []
    for p in paths:
        t = pd.read_csv(p, keep_default_na=False, na_values=[""])
        missing = set(score_columns()) - set(t.columns)
        if missing:
            raise ValueError(f"{p}: not a judge score table, missing columns {sorted(missing)}")
        tables.append(t)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=score_columns())
