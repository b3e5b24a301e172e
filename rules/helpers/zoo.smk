# Helpers of rules/zoo.smk (train_model, hub_model).


def model_spec(wildcards):
    return as_param(config["models"][wildcards.model])


def model_training_param(wildcards):
    """The training section as it applies to ``wildcards.model`` (its overrides folded in)."""
    return as_param(model_training(config, wildcards.model))


def train_priority(wildcards):
    """The job's Snakemake priority: 1 + its training work in millions of token-layers, so that
    every training starts before other ready jobs and the longest first (they overlap on 2 cores)."""
    from universality.zoo.config import training_work

    spec = config["models"][wildcards.model]
    work = training_work(spec, model_training(config, wildcards.model), config["tokenizer"]["max_len"])
    return 1 + work // 1_000_000
