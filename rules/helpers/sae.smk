# Helpers of rules/sae.smk (train_sae, features).


def sae_params(wildcards):
    return as_param(sae_options(config, wildcards.model, int(wildcards.layer)))


def sae_targets():
    return [
        paths.sae(m, s, l, seed)
        for m in MODELS
        for s in config["saes"]["sites"]
        for l in model_layers(config, m)
        for seed in sae_seeds(config, m)
    ]


# --- the SAE-invariance sweep (issue 19): variants of one base SAE (config `sae_sweep`) ---
from universality.workflow.sweep import sweep_entries, sweep_run

SWEEP = config["sae_sweep"]
SWEEP_ENTRIES = sweep_entries(config)  # {entry: {"variant", "shift"}}, the variants + the null
SWEEP_VARIANTS = list(SWEEP["variants"]) if SWEEP_ENTRIES else []
# the base SAE's model (a placeholder when there is no sweep: no sweep rule is then requested)
SWEEP_MODEL = SWEEP["model"] or (MODELS[0] if MODELS else "")


def sweep_param(key):
    """Param function: ``key`` of a variant's run (:func:`sweep_run`); options as canonical JSON."""

    def inner(wildcards):
        value = sweep_run(config, wildcards.variant)[key]
        return as_param(value) if key == "options" else value

    return inner


def sweep_label(wildcards):
    return f"{SWEEP_MODEL}/resid/L{SWEEP['layer']}/sweep-{wildcards.variant}"


def sweep_base_features():
    """The base SAE's feature store (side A of every sweep pair)."""
    return paths.features(SWEEP_MODEL, "resid", SWEEP["layer"], SWEEP["base_seed"])


def sweep_variant_features(wildcards):
    """The feature store of an entry's variant (side B)."""
    return paths.sweep_features(SWEEP_ENTRIES[wildcards.entry]["variant"])


def sweep_pair_options(wildcards):
    return as_param({"kind": "sae", "shift": SWEEP_ENTRIES[wildcards.entry]["shift"],
                     "backend": config["backend"], "chunk_rows": config["pearson"]["chunk_rows"]})


def sweep_store_param(side):
    """Param function: ``{layer: feature store}`` of one side of a sweep pair, as JSON."""

    def inner(wildcards):
        path = sweep_base_features() if side == "a" else sweep_variant_features(wildcards)
        return as_param({str(SWEEP["layer"]): path})

    return inner


def sweep_comparison(wildcards):
    """The name a sweep entry's pair and tables carry (``sae_sweep/<entry>``)."""
    return f"sae_sweep/{wildcards.entry}"


def sweep_targets():
    return [paths.sweep_mppc_summary(e) for e in SWEEP_ENTRIES]
