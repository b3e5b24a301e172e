# Helpers of rules/compare.smk (pearson_pair, mppc).


def comparison_store(comparison, side, layer):
    """The store one side of a layer pair reads: SAE features, or the neuron site's layer store."""
    c = config["comparisons"][comparison]
    model = c[side]
    if c["kind"] == "sae":
        return paths.features(model, "resid", layer, c["seed_" + side])
    return layer_store(paths.activations(model, "neuron"), layer)


def side_layer(wildcards, side):
    return wildcards.la if side == "a" else wildcards.lb


def comparison_input(side):
    """Input function of one side of a layer pair: its feature store, or (neuron baseline) the
    activations directory whose job writes the layer store."""

    def inner(wildcards):
        c = config["comparisons"][wildcards.comparison]
        if c["kind"] == "sae":
            return comparison_store(wildcards.comparison, side, side_layer(wildcards, side))
        return paths.activations(c[side], "neuron")

    return inner


def comparison_store_param(side):
    """Param function: the store path the script opens for one side of a layer pair."""

    def inner(wildcards):
        return comparison_store(wildcards.comparison, side, side_layer(wildcards, side))

    return inner


def comparison_params(wildcards):
    c = config["comparisons"][wildcards.comparison]
    return as_param({"kind": c["kind"], "shift": c["shift"], "backend": config["backend"],
                     "chunk_rows": config["pearson"]["chunk_rows"], "top_k": config["pearson"]["top_k"]})


def comparison_spec(wildcards):
    return as_param(config["comparisons"][wildcards.comparison])


def comparison_pairs(wildcards):
    c = config["comparisons"][wildcards.comparison]
    return [
        paths.pearson(wildcards.comparison, la, lb)
        for la in model_layers(config, c["a"])
        for lb in model_layers(config, c["b"])
    ]


def mppc_targets():
    return [paths.mppc_summary(c) for c in COMPARISONS]


# --- the measures beside MPPC (rules depth, matching, cka, svcca_rsa) ---
MAIN_COMPARISONS = [k for k, c in config["comparisons"].items() if c["shift"] == 0]
#: CKA of residual streams: comparisons of two different models (once per comparison).
CKA_COMPARISONS = [k for k in MAIN_COMPARISONS if config["comparisons"][k]["a"] != config["comparisons"][k]["b"]
                   and config["comparisons"][k]["kind"] == "sae"]
#: SVCCA / RSA of matched SAE features.
MATCHED_COMPARISONS = [k for k in MAIN_COMPARISONS if config["comparisons"][k]["kind"] == "sae"]


def comparison_layers(wildcards):
    """Param: the stored layers of A and B, as JSON."""
    c = config["comparisons"][wildcards.comparison]
    return as_param({"a": model_layers(config, c["a"]), "b": model_layers(config, c["b"])})


def cka_input(side):
    """Input function: the resid activations directory of one side."""

    def inner(wildcards):
        return paths.activations(config["comparisons"][wildcards.comparison][side], "resid")

    return inner


def cka_stores(side):
    """Param function: ``{layer: resid layer store}`` of one side, as JSON."""

    def inner(wildcards):
        model = config["comparisons"][wildcards.comparison][side]
        return as_param({str(l): paths.activation_layer(model, "resid", l) for l in model_layers(config, model)})

    return inner


def matched_stores(side):
    """Input function: the feature stores of every layer of one side."""

    def inner(wildcards):
        c = config["comparisons"][wildcards.comparison]
        return [comparison_store(wildcards.comparison, side, l) for l in model_layers(config, c[side])]

    return inner


def matched_store_param(side):
    """Param function: ``{layer: feature store}`` of one side, as JSON."""

    def inner(wildcards):
        c = config["comparisons"][wildcards.comparison]
        return as_param({str(l): comparison_store(wildcards.comparison, side, l) for l in model_layers(config, c[side])})

    return inner


def _measure_options(keys):
    return as_param({k: config["measures"][k] for k in keys})


def cka_params(wildcards):
    return _measure_options(("cka_tokens", "permutations", "seed"))


def matched_params(wildcards):
    return _measure_options(("cka_tokens", "permutations", "seed", "svcca_dims", "rsa_features"))


def measure_inputs():
    """Every measure's output, by kind (report_measures' inputs)."""
    return {"depth": [paths.depth_stats(c) for c in COMPARISONS],
            "matching": [paths.matching(c) for c in COMPARISONS],
            "cka": [paths.cka(c) for c in CKA_COMPARISONS],
            "svcca_rsa": [paths.svcca_rsa(c) for c in MATCHED_COMPARISONS]}
