"""The judge's prompts: the paper's App. E text in versioned files, and the hash of what it reads.

A prompt set (``judge.prompts`` in the config, a path component of every score file) names one
file per score. Its hash covers the prompt texts and the version of the sample format
(:data:`universality.report.judge.contexts.FORMAT_VERSION`), so a score's lineage records exactly
what the judge was shown besides the samples themselves.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parents[2] / "prompts"

#: The scores of one feature, in the order of the score tables' columns.
SCORES = ("complexity", "monosemanticity")

#: Prompt sets: ``{name: {score: file in PROMPT_DIR}}``. New wording = a new file and a new set.
PROMPT_SETS = {
    "appE-v1": {"complexity": "complexity_v1.txt", "monosemanticity": "monosemanticity_v1.txt"},
}


def _check(name: str) -> dict:
    if name not in PROMPT_SETS:
        raise ValueError(f"judge.prompts: {name!r} is not a prompt set (have {sorted(PROMPT_SETS)})")
    return PROMPT_SETS[name]


def prompt_files(name: str) -> list[str]:
    """Paths of the files of prompt set ``name``, in :data:`SCORES` order."""
    files = _check(name)
    return [str(PROMPT_DIR / files[s]) for s in SCORES]


def load_prompts(name: str) -> dict[str, str]:
    """``{score: prompt text}`` of prompt set ``name`` (trailing whitespace stripped)."""
    return {s: Path(p).read_text(encoding="utf-8").rstrip() for s, p in zip(SCORES, prompt_files(name))}


def prompt_hash(name: str) -> str:
    """SHA-256 (16 hex digits) of the set's prompt texts and the sample format version."""
    from universality.report.judge.contexts import FORMAT_VERSION

    texts = load_prompts(name)
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for s in SCORES:
        h.update(b"\0" + s.encode() + b"\0" + texts[s].encode("utf-8"))
    return h.hexdigest()[:16]


def full_prompt(prompt: str, samples: str) -> str:
    """What the judge reads: the App. E prompt, then the samples block."""
    return f"{prompt}\n\n{samples}"
