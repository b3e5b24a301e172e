import os
import platform
import sys

sys.path.insert(0, workflow.basedir)

from universality.config import as_param, load_config, model_layers

_validated = load_config(config)
config.clear()
config.update(_validated)

MODELS = list(config["models"])
SITES = list(config["activations"]["sites"])


wildcard_constraints:
    model="|".join(MODELS) if MODELS else "^$",
    site="resid|neuron",
    split="train|eval",


def R(*parts):
    """A path under the results root."""
    return os.path.join(config["results"], *parts)


def model_spec(wildcards):
    return as_param(config["models"][wildcards.model])


def layer_list(wildcards):
    return ",".join(str(l) for l in model_layers(config, wildcards.model))


def all_targets():
    targets = [R("models", f"{m}.json") for m in MODELS]
    targets += [R("activations", m, f"{s}.json") for m in MODELS for s in SITES]
    return targets
