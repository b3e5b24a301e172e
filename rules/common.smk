import os
import platform
import re
import sys

sys.path.insert(0, workflow.basedir)

from universality.workflow.config import (as_param, load_config, model_layers, model_training, sae_options,
                                 sae_seeds)

_validated = load_config(config)
config.clear()
config.update(_validated)

MODELS = list(config["models"])
# Trained toy models and hub checkpoints write the same outputs (models/{model}/ + .json):
# each rule is restricted to its own models (rules/models.smk, rules/hub.smk).
TRAINED_MODELS = [m for m in MODELS if config["models"][m]["source"] == "train"]
HUB_MODELS = [m for m in MODELS if config["models"][m]["source"] == "hub"]


def one_of(names):
    """A wildcard constraint matching exactly ``names`` (nothing when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "^$"

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
    return targets + sae_targets() + mppc_targets() + report_targets() + circuit_targets()


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


# --- report (issue 5): results/report/, rules/report.smk ---
from universality.workflow.config import report_plan

REPORT = report_plan(config)


def report_targets():
    return [R("report", "index.html")]


def feature_stores(model, seed):
    """The SAE feature stores of every layer of ``model`` (SAE ``seed``), in layer order."""
    return [R("features", model, "resid", f"L{l}", f"seed{seed}.zarr") for l in model_layers(config, model)]


def layers_csv(model):
    return ",".join(str(l) for l in model_layers(config, model))


def report_setup():
    """Everything report_figures reads besides its tables (one canonical JSON param)."""
    layers = {m: model_layers(config, m) for m in MODELS}
    return as_param({"comparisons": config["comparisons"], "layers": layers, "plan": REPORT,
                     "report": config["report"]})


def caption(name):
    """The caption of figure ``name`` (in the repository, whatever the working directory)."""
    return os.path.join(workflow.basedir, "report", "captions", f"{name}.rst")


def report_figure_outputs():
    """``{output name: report(png)}`` for the figures of this config's plan."""
    out = {}
    for name in REPORT["figures"]:
        key = "complexity_figure" if name == "complexity" else name
        out[key] = report(R("report", "figures", f"{name}.png"), caption=f"../report/captions/{name}.rst",
                          category="Universality (MPPC)")
    return out


# --- circuits (issue 6): results/circuits/, rules/circuits.smk ---
from universality.workflow.config import circuit_models

CIRCUIT_MODELS = circuit_models(config)  # {"ssm": [...], "heads": [...]} by circuits capability


def circuit_options():
    """The circuits section minus the model list (a model's tables do not depend on the others),
    plus the torch backend."""
    options = {k: v for k, v in config["circuits"].items() if k != "models"}
    return as_param({**options, "backend": config["backend"]})


def circuit_mem_mb(wildcards):
    """Memory of a circuits_ssm job: the SSM states of every layer for a clean and a corrupted
    batch (float32 [batch, pos, expand * d_model, d_state]; hub specs default to expand 2, d_state
    16 as Mamba-130m), plus the same again for scan inputs, copies and the model."""
    spec, c = config["models"][wildcards.model], config["circuits"]
    pos = max(c["distances"]) + 6
    states = c["batch_size"] * pos * (spec.get("expand") or 2) * spec["d_model"] * (spec.get("d_state") or 16)
    return 1000 + int(2 * 2 * spec["n_layers"] * states * 4 / 2**20)


def circuit_summaries():
    return [R("circuits", m, "summary.json") for ms in CIRCUIT_MODELS.values() for m in ms]


def circuit_figures():
    """PNGs of circuits_summary (scripts/circuits_summary.py checks it writes exactly these)."""
    figures = [R("circuits", m, f"{stem}.png") for m in CIRCUIT_MODELS["ssm"]
               for stem in ("state_patching", "off_by_one", "ioi")]
    figures += [R("circuits", m, "heads.png") for m in CIRCUIT_MODELS["heads"]]
    return figures + [R("circuits", "induction_circuits.png")]


def circuit_targets():
    return [R("circuits", "summary.json")] if circuit_summaries() else []
