import os
import platform
import sys

sys.path.insert(0, workflow.basedir)

from universality.config import as_param, load_config, model_layers, sae_options, sae_seeds

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
    return targets + sae_targets() + mppc_targets()


def sae_params(wildcards):
    return as_param(sae_options(config, wildcards.model, int(wildcards.layer)))


def sae_targets():
    return [
        R("saes", m, s, f"L{l}", f"seed{seed}")
        for m in MODELS
        for s in config["saes"]["sites"]
        for l in model_layers(config, m)
        for seed in sae_seeds(config, m)
    ]


wildcard_constraints:
    layer=r"\d+",
    seed=r"\d+",


COMPARISONS = list(config["comparisons"])


wildcard_constraints:
    comparison="|".join(COMPARISONS) if COMPARISONS else "^$",
    la=r"\d+",
    lb=r"\d+",


def comparison_store(comparison, side, layer):
    """The store one side of a layer pair reads: SAE features, or the neuron site's layer store."""
    c = config["comparisons"][comparison]
    model = c[side]
    if c["kind"] == "sae":
        return R("features", model, "resid", f"L{layer}", f"seed{c['seed_' + side]}.zarr")
    return os.path.join(R("activations", model, "neuron"), f"L{layer}.zarr")


def comparison_input(side):
    def inner(wildcards):
        c = config["comparisons"][wildcards.comparison]
        layer = wildcards.la if side == "a" else wildcards.lb
        if c["kind"] == "sae":
            return comparison_store(wildcards.comparison, side, layer)
        return R("activations", c[side], "neuron")

    return inner


def comparison_params(wildcards):
    c = config["comparisons"][wildcards.comparison]
    return as_param({"kind": c["kind"], "shift": c["shift"], "backend": config["backend"],
                     "chunk_rows": config["pearson"]["chunk_rows"]})


def comparison_pairs(wildcards):
    c = config["comparisons"][wildcards.comparison]
    return [
        R("pearson", wildcards.comparison, f"A{la}_B{lb}.npz")
        for la in model_layers(config, c["a"])
        for lb in model_layers(config, c["b"])
    ]


def mppc_targets():
    return [R("mppc", f"{c}.json") for c in COMPARISONS]
