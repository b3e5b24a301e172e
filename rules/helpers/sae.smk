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
