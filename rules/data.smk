# Corpus, tokenizer, token sets and activations (universality/data).
include: "helpers/data.smk"


rule documents:
    output:
        documents=paths.documents(),
        manifest=paths.corpus_manifest(),
    params:
        corpus=as_param(config["corpus"]),
        # A different Python has a different standard library: the default corpus changes.
        python=platform.python_version(),
    log:
        paths.log("documents"),
    benchmark:
        paths.benchmark("documents"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/documents.py"


rule tokenizer:
    input:
        documents=rules.documents.output.documents,
    output:
        out=paths.tokenizer(),
    params:
        tokenizer=tokenizer_param(),
    log:
        paths.log("tokenizer"),
    benchmark:
        paths.benchmark("tokenizer"),
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/tokenizer.py"


rule tokens:
    input:
        documents=rules.documents.output.documents,
        tokenizer=rules.tokenizer.output.out,
    output:
        out=directory(paths.tokens("{split}")),
        manifest=paths.tokens_manifest("{split}"),
    params:
        max_len=config["tokenizer"]["max_len"],
        doc_mode=config["tokenizer"]["documents"],  # split | truncate (paper App. A.1)
    log:
        paths.log("tokens", "{split}"),
    benchmark:
        paths.benchmark("tokens", "split"),
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/tokens.py"


rule token_budget:
    # Every token budget of the config against the token sets, before any model is trained (the
    # model rules take its record as an input). A budget change reruns this check and, through
    # it, the models (as when the budget was a param of `tokens`); see docs/reliability.md.
    input:
        train_manifest=paths.tokens_manifest("train"),
        eval_manifest=paths.tokens_manifest("eval"),
    output:
        out=paths.token_budget(),
    params:
        budget=token_budget_param,
    log:
        paths.log("token_budget"),
    benchmark:
        paths.benchmark("token_budget"),
    threads: 1
    resources:
        mem_mb=500,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/token_budget.py"


rule activations:
    input:
        model_dir=paths.model("{model}"),
        sae_set=paths.tokens("train"),
        eval_set=paths.tokens("eval"),
    output:
        out=directory(paths.activations("{model}", "{site}")),
        manifest=paths.activations_manifest("{model}", "{site}"),
    params:
        layers=layer_list,
        options=as_param(config["activations"]),
        backend=config["backend"],  # torch device of the forward (universality.core.device)
    log:
        paths.log("activations", "{model}", "{site}"),
    benchmark:
        paths.benchmark("activations", "model", "site"),
    # 1, not 2: with 2 threads it used 1.24 cores (87 CPU s, 70 s wall over 10 jobs) and could not
    # start beside a 1-thread training, so one core idled (70 s beside the last training).
    threads: 1
    resources:
        mem_mb=6000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/activations.py"
