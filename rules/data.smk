rule documents:
    output:
        documents=R("corpus", "documents.jsonl"),
        manifest=R("corpus", "manifest.json"),
    params:
        corpus=as_param(config["corpus"]),
        # A different Python has a different standard library: the default corpus changes.
        python=platform.python_version(),
    log:
        R("logs", "documents.log"),
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
        out=R("tokenizer", "tokenizer.json"),
    params:
        tokenizer=as_param(config["tokenizer"]),
    log:
        R("logs", "tokenizer.log"),
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
        out=directory(R("tokens", "{split}.zarr")),
        manifest=R("tokens", "{split}.json"),
    params:
        max_len=config["tokenizer"]["max_len"],
    log:
        R("logs", "tokens", "{split}.log"),
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/tokens.py"


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
