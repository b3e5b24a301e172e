# Helpers of rules/zoo.smk (train_model, hub_model).


def model_spec(wildcards):
    return as_param(config["models"][wildcards.model])


def model_training_param(wildcards):
    """The training section as it applies to ``wildcards.model`` (its overrides folded in)."""
    return as_param(model_training(config, wildcards.model))
