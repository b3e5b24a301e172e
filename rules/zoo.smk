rule train_model:
    input:
        train_tokens=R("tokens", "train.zarr"),
        eval_tokens=R("tokens", "eval.zarr"),
        tokenizer=R("tokenizer", "tokenizer.json"),
    output:
        out=directory(R("models", "{model}")),
        metrics=R("models", "{model}.json"),
    wildcard_constraints:
        model=one_of(TRAINED_MODELS),
    params:
        spec=model_spec,
        training=lambda w: as_param(model_training(config, w.model)),
    log:
        R("logs", "train_model", "{model}.log"),
    # One thread each: the toy models are too small for two threads to pay (their OpenMP barriers
    # cost more than they save on 2 cores), and the three trainings then run side by side.
    threads: 1
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
        eval_tokens=R("tokens", "eval.zarr"),
    output:
        out=directory(R("models", "{model}")),
        metrics=R("models", "{model}.json"),
    wildcard_constraints:
        model=one_of(HUB_MODELS),
    params:
        spec=model_spec,
        max_eval_tokens=config["training"]["eval_tokens"],
    log:
        R("logs", "hub_model", "{model}.log"),
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/hub_model.py"
