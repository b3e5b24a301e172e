# Induction circuits (issues 6, 16; paper Sec. 6, App. G-H): Mamba path patching with the paper's
# definitions (+ broader variants), IOI, GPT-NeoX heads and head -> head paths, RWKV WKV-state paths
# (issue 14; universality/circuits).
include: "helpers/circuits.smk"


rule circuits_ssm:
    input:
        model_dir=paths.model("{model}"),
        tokenizer=paths.tokenizer(),
    output:
        tables=circuit_ssm_tables(),
        summary=paths.circuit_summary("{model}"),
    wildcard_constraints:
        model=one_of(CIRCUIT_MODELS["ssm"]),
    params:
        options=circuit_options(),
        reference=circuit_reference,
    log:
        paths.log("circuits", "{model}"),
    benchmark:
        paths.benchmark("circuits_ssm", "model"),
    threads: 1  # measured: 2 threads on 2 shared cores ran 4x slower than 1 (small ops)
    resources:
        mem_mb=circuit_mem_mb,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/circuits_ssm.py"


rule circuits_wkv:
    input:
        model_dir=paths.model("{model}"),
        tokenizer=paths.tokenizer(),
    output:
        tables=circuit_wkv_tables(),
        summary=paths.circuit_summary("{model}"),
    wildcard_constraints:
        model=one_of(CIRCUIT_MODELS["wkv"]),
    params:
        options=circuit_options(),
    log:
        paths.log("circuits", "{model}"),
    benchmark:
        paths.benchmark("circuits_wkv", "model"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/circuits_wkv.py"


rule circuits_heads:
    input:
        model_dir=paths.model("{model}"),
        tokenizer=paths.tokenizer(),
    output:
        scores=paths.circuit_table("{model}", "head_scores"),
        patching=paths.circuit_table("{model}", "head_patching"),
        head_paths=paths.circuit_table("{model}", "head_paths"),
        summary=paths.circuit_summary("{model}"),
    wildcard_constraints:
        model=one_of(CIRCUIT_MODELS["heads"]),
    params:
        options=circuit_options(),
    log:
        paths.log("circuits", "{model}"),
    benchmark:
        paths.benchmark("circuits_heads", "model"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/circuits_heads.py"


rule circuits_summary:
    input:
        summaries=circuit_summaries(),
    output:
        summary=paths.circuits_summary(),
        figures=circuit_figures(),
    log:
        paths.log("circuits", "summary"),
    benchmark:
        paths.benchmark("circuits_summary"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/circuits_summary.py"
