"""The judge interface: prompts in, :class:`Answer` s out, and how an answer becomes a score.

A judge has ``identity`` (a JSON-able dict naming kind, model and endpoint, never a secret; its
:func:`slug` is the ``{judge}`` path component) and ``answer(prompts, on_answer)``, which calls
``on_answer(i, answer)`` for each prompt as its answer arrives (so the caller can cache it) and
returns the answers in prompt order. Scores are 1..5: ``expected`` = sum_k k p_k over the
judge's probabilities of the digits 1..5 (renormalised over the five), ``argmax`` the most likely
digit; a judge without probabilities gives the parsed digit for both. An answer with neither
is ``parsed = False`` with NaN scores: counted and shown, never dropped.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

DIGITS = ("1", "2", "3", "4", "5")


class JudgeError(RuntimeError):
    """A judge could not answer (endpoint down after retries, model file missing, ...)."""


@dataclass(frozen=True)
class Answer:
    """One judged prompt. ``source``: "next-token" (local probabilities), "logprobs" (endpoint
    top logprobs), "text" (the digit parsed from the reply) or "none" (unparseable).
    ``digit_mass``: the judge's total probability on the five digits (NaN without probabilities)."""

    expected: float
    argmax: int
    raw: str
    parsed: bool
    source: str
    digit_mass: float = math.nan

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Answer":
        return cls(**{k: d[k] for k in ("expected", "argmax", "raw", "parsed", "source", "digit_mass")})


def from_probabilities(probs: dict[str, float], raw: str, source: str) -> Answer | None:
    """An answer from ``{digit: probability}`` (digits 1..5; others ignored); None if all zero."""
    p = [max(float(probs.get(d, 0.0)), 0.0) for d in DIGITS]
    mass = sum(p)
    if not mass > 0:
        return None
    expected = sum((k + 1) * v for k, v in enumerate(p)) / mass
    return Answer(expected=expected, argmax=1 + max(range(5), key=lambda k: (p[k], -k)), raw=raw,
                  parsed=True, source=source, digit_mass=mass)


_DIGIT = re.compile(r"(?<![\d.])([1-5])(?!\.?\d)")


def from_text(raw: str) -> Answer:
    """The first stand-alone digit 1..5 of a reply ("3", "Score: 4", "**2**"); else unparseable."""
    m = _DIGIT.search(raw or "")
    if not m:
        return Answer(expected=math.nan, argmax=0, raw=raw, parsed=False, source="none")
    k = int(m.group(1))
    return Answer(expected=float(k), argmax=k, raw=raw, parsed=True, source="text")


def slug(identity: dict) -> str:
    """The ``{judge}`` path component: kind and model, lower case, ``[a-z0-9.-]`` only."""
    model = str(identity.get("model") or "default").rsplit("/", 1)[-1]
    model = re.sub(r"\.gguf$", "", model, flags=re.I)
    return re.sub(r"[^a-z0-9.]+", "-", f"{identity['kind']}-{model}".lower()).strip("-")


def make_judge(options: dict, threads: int = 1):
    """The judge of the ``judge`` config section (``options``: kind, model, base_url, api_key_env,
    concurrency, timeout, retries)."""
    kind = options["kind"]
    if kind == "local":
        from universality.report.judge.local import LocalJudge

        return LocalJudge(options.get("model"), threads=threads)
    if kind == "openai":
        from universality.report.judge.openai import OpenAIJudge

        return OpenAIJudge(base_url=options["base_url"], model=options["model"],
                           api_key_env=options["api_key_env"], concurrency=options["concurrency"],
                           timeout=options["timeout"], retries=options["retries"])
    raise ValueError(f"judge.kind: {kind!r} has no judge (local | openai; none = no scores)")


def judge_identity(options: dict) -> dict:
    """What names a judge in lineage and on the page (no API key, only its variable's name)."""
    ident = {"kind": options["kind"], "model": options.get("model")}
    if options["kind"] == "openai":
        ident.update(base_url=options["base_url"], api_key_env=options["api_key_env"])
    elif options["kind"] == "local" and not ident["model"]:
        from universality.report.judge.local import DEFAULT_NAME

        ident["model"] = DEFAULT_NAME
    return ident
