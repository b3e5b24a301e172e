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
