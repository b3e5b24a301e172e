rule activations:
    input:
        model_dir=R("models", "{model}"),
        sae_set=R("tokens", "train.zarr"),
        eval_set=R("tokens", "eval.zarr"),
    output:
        out=directory(R("activations", "{model}", "{site}")),
        manifest=R("activations", "{model}", "{site}.json"),
    params:
        layers=layer_list,
        options=as_param(config["activations"]),
        backend=config["backend"],  # torch device of the forward (universality.core.device)
    log:
        R("logs", "activations", "{model}", "{site}.log"),
    threads: 2
    resources:
        mem_mb=6000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/activations.py"
