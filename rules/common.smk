# Setup shared by every stage: the validated config, wildcard constraints, model and comparison
# lists, result paths (universality/core/paths.py), and helpers used by more than one stage.
# A stage's own helpers sit in rules/helpers/<stage>.smk, included by rules/<stage>.smk (the
# linter wants rules and functions in separate files).
import os
import platform
import re
import sys

sys.path.insert(0, workflow.basedir)

from universality.core.paths import ResultPaths, layer_store
from universality.workflow.config import (as_param, load_config, model_layers, model_training, sae_options,
                                 sae_seeds)

_validated = load_config(config)
config.clear()
config.update(_validated)

paths = ResultPaths(config["results"])

MODELS = list(config["models"])
# Trained toy models and hub checkpoints write the same outputs (models/{model}/ + .json):
# each rule is restricted to its own models (rules/zoo.smk).
TRAINED_MODELS = [m for m in MODELS if config["models"][m]["source"] == "train"]
HUB_MODELS = [m for m in MODELS if config["models"][m]["source"] == "hub"]
SITES = list(config["activations"]["sites"])
COMPARISONS = list(config["comparisons"])


wildcard_constraints:
    model="|".join(MODELS) if MODELS else "^$",
    site="resid|neuron",
    split="train|eval",
    layer=r"\d+",
    seed=r"\d+",
    comparison="|".join(COMPARISONS) if COMPARISONS else "^$",
    la=r"\d+",
    lb=r"\d+",


def one_of(names):
    """A wildcard constraint matching exactly ``names`` (nothing when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "^$"


def layers_csv(model):
    """The layers of ``model`` as "0,1,2" (a script option)."""
    return ",".join(str(l) for l in model_layers(config, model))


def layer_list(wildcards):
    return layers_csv(wildcards.model)


def all_targets():
    """What ``rule all`` asks for, stage by stage."""
    targets = [paths.model_metrics(m) for m in MODELS]
    targets += [paths.activations_manifest(m, s) for m in MODELS for s in SITES]
    return targets + sae_targets() + mppc_targets() + report_targets() + circuit_targets() + sweep_targets()
