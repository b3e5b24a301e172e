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
    benchmark:
        paths.benchmark("train_sae", "layer", "model", "seed", "site"),
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
    benchmark:
        paths.benchmark("features", "layer", "model", "seed", "site"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/features.py"


# --- the SAE-invariance sweep (issue 19, paper Sec. 4.3.2): each variant of the base SAE is
# trained and encoded by the same scripts as the SAEs above, then compared with the base SAE's
# layer by the same Pearson / MPPC scripts as a comparison (one layer pair).
rule train_sae_variant:
    input:
        acts_dir=paths.activations(SWEEP_MODEL, "resid"),
        model_dir=paths.model(SWEEP_MODEL),
        eval_set=paths.tokens("eval"),
    output:
        out=directory(paths.sweep_sae("{variant}")),
    wildcard_constraints:
        variant=one_of(SWEEP_VARIANTS),
    params:
        model=SWEEP_MODEL,
        site="resid",
        layer=SWEEP["layer"],
        seed=SWEEP["base_seed"],
        init_seed=sweep_param("init_seed"),
        data_seed=sweep_param("data_seed"),
        options=sweep_param("options"),
        label=sweep_label,
        backend=config["backend"],
    log:
        paths.sweep_log("train", "{variant}"),
    benchmark:
        paths.benchmark("train_sae_variant", "variant"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/train_sae.py"


rule sweep_features:
    input:
        sae=rules.train_sae_variant.output.out,
        acts_dir=paths.activations(SWEEP_MODEL, "resid"),
    output:
        out=directory(paths.sweep_features("{variant}")),
        manifest=paths.sweep_features_manifest("{variant}"),
    wildcard_constraints:
        variant=one_of(SWEEP_VARIANTS),
    params:
        model=SWEEP_MODEL,
        site="resid",
        layer=SWEEP["layer"],
        seed=SWEEP["base_seed"],
        chunk_rows=config["pearson"]["feature_chunk_rows"],
        backend=config["backend"],
    log:
        paths.sweep_log("features", "{variant}"),
    benchmark:
        paths.benchmark("sweep_features", "variant"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/features.py"


rule sweep_pair:
    input:
        a_store=sweep_base_features(),
        b_store=sweep_variant_features,
    output:
        out=paths.sweep_pearson("{entry}"),
    wildcard_constraints:
        entry=one_of(list(SWEEP_ENTRIES)),
    params:
        comparison=sweep_comparison,
        la=SWEEP["layer"],
        lb=SWEEP["layer"],
        options=sweep_pair_options,
    log:
        paths.sweep_log("pearson", "{entry}"),
    benchmark:
        paths.benchmark("sweep_pair", "entry"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/pearson_pair.py"


rule sweep_mppc:
    input:
        pairs=rules.sweep_pair.output.out,
    output:
        forward=paths.sweep_mppc("{entry}"),
        backward=paths.sweep_mppc_reverse("{entry}"),
        summary=paths.sweep_mppc_summary("{entry}"),
    wildcard_constraints:
        entry=one_of(list(SWEEP_ENTRIES)),
    params:
        comparison=sweep_comparison,
        # what the pair file must have been computed from (mppc.load_pairs checks)
        spec=sweep_pair_options,
        a_stores=sweep_store_param("a"),
        b_stores=sweep_store_param("b"),
    log:
        paths.sweep_log("mppc", "{entry}"),
    benchmark:
        paths.benchmark("sweep_mppc", "entry"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/mppc.py"
