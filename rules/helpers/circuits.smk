# Helpers of rules/circuits.smk (circuits_ssm, circuits_heads, circuits_summary).
from universality.circuits import wkv_paths
from universality.circuits.ssm_paths import table_names
from universality.workflow.config import circuit_models

CIRCUIT_MODELS = circuit_models(config)  # {"ssm": [...], "heads": [...], "wkv": [...]}: models by circuits capability (registry)


def circuit_reference(wildcards):
    """"mamba-130m" when the model is the paper's Mamba-130m checkpoint (its App. G tables are
    printed beside ours), else ""."""
    spec = config["models"][wildcards.model]
    return "mamba-130m" if spec.get("hub_id") == "state-spaces/mamba-130m-hf" else ""


def circuit_options():
    """The circuits section minus the model list (a model's tables do not depend on the others),
    plus the torch backend."""
    options = {k: v for k, v in config["circuits"].items() if k != "models"}
    return as_param({**options, "backend": config["backend"]})


def circuit_ssm_tables():
    """The CSVs of circuits_ssm, in ``ssm_paths.table_names`` order (the script writes them so)."""
    names = table_names(config["circuits"]["broader_variants"])
    return [paths.circuit_table("{model}", n) for n in names]


def circuit_wkv_tables():
    """The CSVs of circuits_wkv, in ``wkv_paths.table_names`` order (the script writes them so)."""
    return [paths.circuit_table("{model}", n) for n in wkv_paths.table_names(config["circuits"]["broader_variants"])]


def circuit_mem_mb(wildcards):
    """Memory of a circuits_ssm job: the SSM states of every layer for a clean and a corrupted
    batch (float32 [batch, pos, expand * d_model, d_state]; hub specs default to expand 2, d_state
    16 as Mamba-130m), plus the same again for scan inputs, copies and the model."""
    spec, c = config["models"][wildcards.model], config["circuits"]
    pos = max(c["distances"]) + 6
    states = c["batch_size"] * pos * (spec.get("expand") or 2) * spec["d_model"] * (spec.get("d_state") or 16)
    return 1000 + int(2 * 2 * spec["n_layers"] * states * 4 / 2**20)


def circuit_summaries():
    return [paths.circuit_summary(m) for ms in CIRCUIT_MODELS.values() for m in ms]


def circuit_figures():
    """PNGs of circuits_summary (scripts/circuits_summary.py checks it writes exactly these)."""
    figures = [paths.circuit_figure(m, stem) for m in CIRCUIT_MODELS["ssm"]
               for stem in ("state_patching", "off_by_one", "ioi")]
    figures += [paths.circuit_figure(m, stem) for m in CIRCUIT_MODELS["heads"] for stem in ("heads", "head_paths")]
    figures += [paths.circuit_figure(m, stem) for m in CIRCUIT_MODELS["wkv"] for stem in ("wkv_state", "wkv_kv_in")]
    return figures + [paths.induction_figure()]


def circuit_targets():
    return [paths.circuits_summary()] if circuit_summaries() else []
