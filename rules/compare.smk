# Pearson correlation of every layer pair of a comparison, reduced to MPPC tables (universality/compare).
include: "helpers/compare.smk"


rule pearson_pair:
    input:
        a_input=comparison_input("a"),
        b_input=comparison_input("b"),
    output:
        out=paths.pearson("{comparison}", "{la}", "{lb}"),
    params:
        a_store=comparison_store_param("a"),
        b_store=comparison_store_param("b"),
        options=comparison_params,
    log:
        paths.pearson_log("{comparison}", "{la}", "{lb}"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/pearson_pair.py"


rule mppc:
    input:
        pairs=comparison_pairs,
    output:
        forward=paths.mppc("{comparison}"),
        backward=paths.mppc_reverse("{comparison}"),
        summary=paths.mppc_summary("{comparison}"),
    params:
        comparison=comparison_spec,
    log:
        paths.log("mppc", "{comparison}"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/mppc.py"
