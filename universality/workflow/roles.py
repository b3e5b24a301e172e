"""Roles of the comparisons, inferred from the config (issue 14): which comparison is a
cross-architecture pair, a skyline, a control, a null, and how they group per cross pair.

Pure functions on a validated config dict (no import of :mod:`universality.workflow.config`, which
builds the report plan from them). Architectures are told apart by ``models.<m>.arch`` values only,
never by name.
"""
from __future__ import annotations

#: The roles a comparison can have (:func:`comparison_role`).
ROLES = ("cross_arch", "model_seed", "sae_seed", "control", "other")


def is_control(config: dict, model: str) -> bool:
    """An untrained model (``source: train``, ``train_tokens: 0``): the random-initialisation control."""
    m = config["models"][model]
    return m.get("source", "train") == "train" and m.get("train_tokens") == 0


def comparison_role(config: dict, name: str) -> str:
    """sae_seed (one model, two SAE seeds) | control (either side untrained) | model_seed (same
    architecture, two trained models) | cross_arch (two architectures) | other (neuron, nulls)."""
    c = config["comparisons"][name]
    arch = lambda m: config["models"][m]["arch"]
    if c["kind"] != "sae" or c["shift"]:
        return "other"
    if c["a"] == c["b"]:
        return "sae_seed"
    if is_control(config, c["a"]) or is_control(config, c["b"]):
        return "control"
    return "model_seed" if arch(c["a"]) == arch(c["b"]) else "cross_arch"


def same_a(x: dict, y: dict) -> bool:
    """Two comparisons whose rows are the same features (or neurons) of A."""
    return (x["kind"], x["a"], x["seed_a"]) == (y["kind"], y["a"], y["seed_a"])


def inferred_differences(config: dict, main: list[str]) -> list[list[str]]:
    """``[[cross, skyline], ...]``: every cross-architecture SAE comparison with the first
    model-seed comparison of the same A (the paper's Figs. 3b and 11b share one skyline)."""
    comps = config["comparisons"]
    roles = {k: comparison_role(config, k) for k in main}
    pairs = []
    for cross in (k for k in main if roles[k] == "cross_arch"):
        skyline = [k for k in main if roles[k] == "model_seed" and same_a(comps[k], comps[cross])]
        if skyline:
            pairs.append([cross, skyline[0]])
    return pairs


def cross_pairs(config: dict, main: list[str], chance: dict, differences: list[list[str]]) -> list[dict]:
    """One entry per cross-architecture SAE comparison, for the side-by-side view:
    ``{"cross", "a", "b", "arch_b", "null", "neuron", "neuron_null", "skyline"}`` (None where the
    config has no such comparison). ``neuron``: the first neuron comparison with the same A and B
    models; ``null`` / ``neuron_null``: their chance levels from ``chance``."""
    comps = config["comparisons"]
    skylines = {cross: skyline for cross, skyline in differences}
    out = []
    for cross in (k for k in main if comparison_role(config, k) == "cross_arch"):
        c = comps[cross]
        neuron = [k for k in main if comps[k]["kind"] == "neuron" and (comps[k]["a"], comps[k]["b"]) == (c["a"], c["b"])]
        n = (neuron + [None])[0]
        out.append({"cross": cross, "a": c["a"], "b": c["b"], "arch_b": config["models"][c["b"]]["arch"],
                    "null": chance.get(cross), "neuron": n, "neuron_null": chance.get(n) if n else None,
                    "skyline": skylines.get(cross)})
    return out
