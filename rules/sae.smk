# SAEs and their feature activations on the eval tokens (universality/sae).
include: "helpers/sae.smk"


rule train_sae:
    input:
        acts_dir=paths.activations("{model}", "{site}"),
        model_dir=paths.model("{model}"),
        eval_set=paths.tokens("eval"),
    output:
        out=directory(paths.sae("{model}", "{site}", "{layer}", "{seed}")),
    params:
        options=sae_params,
        backend=config["backend"],  # torch device of training, evaluation and CE loss
    log:
        paths.sae_log("train_sae", "{model}", "{site}", "{layer}", "{seed}"),
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
        sae=rules.train_sae.output.out,
        acts_dir=paths.activations("{model}", "{site}"),
    output:
        out=directory(paths.features("{model}", "{site}", "{layer}", "{seed}")),
        manifest=paths.features_manifest("{model}", "{site}", "{layer}", "{seed}"),
    params:
        chunk_rows=config["pearson"]["feature_chunk_rows"],
        backend=config["backend"],  # torch device of the encoder
    log:
        paths.sae_log("features", "{model}", "{site}", "{layer}", "{seed}"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/features.py"
