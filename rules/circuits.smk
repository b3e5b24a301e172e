# Induction circuits (issue 6; paper Sec. 6, App. G): Mamba path patching, GPT-NeoX heads.
# Functions and model lists live in rules/common.smk (CIRCUIT_MODELS, circuit_*).


rule circuits_ssm:
    input:
        model_dir=R("models", "{model}"),
        tokenizer=R("tokenizer", "tokenizer.json"),
    output:
        state=R("circuits", "{model}", "state.csv"),
        ssm_in=R("circuits", "{model}", "ssm_in.csv"),
        conv_in=R("circuits", "{model}", "conv_in.csv"),
        ioi_table=R("circuits", "{model}", "ioi.csv"),
        summary=R("circuits", "{model}", "summary.json"),
    wildcard_constraints:
        model=one_of(CIRCUIT_MODELS["ssm"]),
    params:
        options=circuit_options(),
    log:
        R("logs", "circuits", "{model}.log"),
    threads: 1  # measured: 2 threads on 2 shared cores ran 4x slower than 1 (small ops)
    resources:
        mem_mb=circuit_mem_mb,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/circuits_ssm.py"


rule circuits_heads:
    input:
        model_dir=R("models", "{model}"),
        tokenizer=R("tokenizer", "tokenizer.json"),
    output:
        scores=R("circuits", "{model}", "head_scores.csv"),
        patching=R("circuits", "{model}", "head_patching.csv"),
        summary=R("circuits", "{model}", "summary.json"),
    wildcard_constraints:
        model=one_of(CIRCUIT_MODELS["heads"]),
    params:
        options=circuit_options(),
    log:
        R("logs", "circuits", "{model}.log"),
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
        summary=R("circuits", "summary.json"),
        figures=circuit_figures(),
    log:
        R("logs", "circuits", "summary.log"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/circuits_summary.py"
