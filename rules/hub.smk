rule hub_model:
    # A hub checkpoint (source: hub) from the local Hugging Face cache at its pinned revision,
    # re-saved as float32 safetensors; nothing is downloaded unless UNIVERSALITY_HUB_DOWNLOAD=1.
    input:
        eval_tokens=R("tokens", "eval.zarr"),
    output:
        out=directory(R("models", "{model}")),
        metrics=R("models", "{model}.json"),
    wildcard_constraints:
        model=one_of(HUB_MODELS),
    params:
        spec=model_spec,
        max_eval_tokens=config["training"]["eval_tokens"],
    log:
        R("logs", "hub_model", "{model}.log"),
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/hub_model.py"
