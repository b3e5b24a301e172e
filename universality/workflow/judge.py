"""The LLM judge's plan (issue 17; paper Sec. 5.2): which features of which SAEs are scored, by whom.

``judge_plan`` lists one source per (model, SAE seed) that is A of a main SAE comparison; the
rules in rules/report.smk (``judge_contexts``, ``judge_scores``, ``report_judge``) follow it.
"""
from __future__ import annotations

from universality.workflow.config import ConfigError, report_plan
from universality.workflow.roles import comparison_role


def judge_plan(config: dict) -> dict:
    """``{"judge": slug or None, "prompts", "sources": [{"model", "seed", "stratify", "comparisons",
    "roles"}]}``: one source per (model, SAE seed) that is A of a main SAE comparison; its features
    are sampled per MPPC bin of ``stratify`` (its first cross-architecture comparison, else its
    first), and shown against every comparison in ``comparisons``. No judge: no sources."""
    from universality.report.judge.base import judge_identity, slug

    j = config["judge"]
    if j["kind"] == "none":
        return {"judge": None, "prompts": j["prompts"], "sources": []}
    plan = report_plan(config)
    comps = config["comparisons"]
    sources = []
    for model, seed in plan["complexity"]:
        names = [n for n in plan["main"] if comps[n]["kind"] == "sae" and (comps[n]["a"], comps[n]["seed_a"]) == (model, seed)]
        roles = {n: comparison_role(config, n) for n in names}
        cross = [n for n in names if roles[n] == "cross_arch"]
        sources.append({"model": model, "seed": seed, "stratify": (cross + names)[0], "comparisons": names,
                        "roles": roles})
    return {"judge": slug(judge_identity(j)), "prompts": j["prompts"], "sources": sources}


def check_judge(config: dict) -> None:
    from universality.report.judge.prompts import PROMPT_SETS

    j = config["judge"]
    if j["kind"] == "openai":
        for key in ("base_url", "model"):
            if not j[key]:
                raise ConfigError(f"judge.{key}: required when judge.kind is 'openai'")
    if j["prompts"] not in PROMPT_SETS:
        raise ConfigError(f"judge.prompts: {j['prompts']!r} is not a prompt set (have {sorted(PROMPT_SETS)})")
    bins = j["bins"]
    if any(b >= c for b, c in zip(bins, bins[1:])):
        raise ConfigError(f"judge.bins: {bins} is not strictly increasing")
