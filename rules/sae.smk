rule train_sae:
    input:
        acts_dir=R("activations", "{model}", "{site}"),
        model_dir=R("models", "{model}"),
        eval_set=R("tokens", "eval.zarr"),
    output:
        out=directory(R("saes", "{model}", "{site}", "L{layer}", "seed{seed}")),
    params:
        options=sae_params,
        backend=config["backend"],  # torch device of training, evaluation and CE loss
    log:
        R("logs", "train_sae", "{model}", "{site}", "L{layer}", "seed{seed}.log"),
    # One thread per SAE and two SAEs at once beat two threads per SAE on two cores.
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/train_sae.py"


rule features:
    input:
        sae=R("saes", "{model}", "{site}", "L{layer}", "seed{seed}"),
        acts_dir=R("activations", "{model}", "{site}"),
    output:
        out=directory(R("features", "{model}", "{site}", "L{layer}", "seed{seed}.zarr")),
        manifest=R("features", "{model}", "{site}", "L{layer}", "seed{seed}.json"),
    params:
        chunk_rows=config["pearson"]["feature_chunk_rows"],
        backend=config["backend"],  # torch device of the encoder
    log:
        R("logs", "features", "{model}", "{site}", "L{layer}", "seed{seed}.log"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/features.py"
