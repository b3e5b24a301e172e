rule train_model:
    input:
        train_tokens=R("tokens", "train.zarr"),
        eval_tokens=R("tokens", "eval.zarr"),
        tokenizer=R("tokenizer", "tokenizer.json"),
    output:
        out=directory(R("models", "{model}")),
        metrics=R("models", "{model}.json"),
    params:
        spec=model_spec,
        training=as_param(config["training"]),
    log:
        R("logs", "train_model", "{model}.log"),
    threads: 2
    resources:
        mem_mb=6000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/train_model.py"
