# Trained toy models and hub checkpoints (universality/zoo); both write models/{model}/ + .json.
include: "helpers/zoo.smk"


rule train_model:
    input:
        # every token budget checked before any model trains. Not ancient(): in Snakemake 9.27 the
        # DAG then drops other reruns downstream of the check (docs/reliability.md)
        budget=paths.token_budget(),
        train_tokens=paths.tokens("train"),
        eval_tokens=paths.tokens("eval"),
        tokenizer=paths.tokenizer(),
    output:
        out=directory(paths.model("{model}")),
        metrics=paths.model_metrics("{model}"),
    wildcard_constraints:
        model=one_of(TRAINED_MODELS),
    params:
        spec=model_spec,
        training=model_training_param,
    log:
        paths.log("train_model", "{model}"),
    benchmark:
        paths.benchmark("train_model", "model"),
    # One thread each: the toy models are too small for two threads to pay (their OpenMP barriers
    # cost more than they save on 2 cores), and the three trainings then run side by side.
    threads: 1
    # The longest trainings first (rules/helpers/zoo.smk): the Mamba's no longer starts last.
    priority: train_priority
    resources:
        mem_mb=6000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/train_model.py"


rule hub_model:
    # A hub checkpoint (source: hub) from the local Hugging Face cache at its pinned revision,
    # re-saved as float32 safetensors; nothing is downloaded unless UNIVERSALITY_HUB_DOWNLOAD=1.
    input:
        budget=paths.token_budget(),
        eval_tokens=paths.tokens("eval"),
    output:
        out=directory(paths.model("{model}")),
        metrics=paths.model_metrics("{model}"),
    wildcard_constraints:
        model=one_of(HUB_MODELS),
    params:
        spec=model_spec,
        max_eval_tokens=config["training"]["eval_tokens"],
    log:
        paths.log("hub_model", "{model}"),
    benchmark:
        paths.benchmark("hub_model", "model"),
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/hub_model.py"
