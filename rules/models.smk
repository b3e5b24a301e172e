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
