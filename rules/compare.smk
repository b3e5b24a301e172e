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
    benchmark:
        paths.benchmark("pearson_pair", "comparison", "la", "lb"),
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
        # the stores the pair files must have been computed from (mppc.load_pairs checks)
        spec=comparison_spec,
        a_stores=matched_store_param("a"),
        b_stores=matched_store_param("b"),
    log:
        paths.log("mppc", "{comparison}"),
    benchmark:
        paths.benchmark("mppc", "comparison"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/mppc.py"


# The measures beside MPPC: each its own rule and file, so adding one reruns nothing else.
rule depth:
    input:
        forward=paths.mppc("{comparison}"),
        backward=paths.mppc_reverse("{comparison}"),
    output:
        out=paths.depth_stats("{comparison}"),
    params:
        layers=comparison_layers,
        coverage=config["measures"]["coverage"],
    log:
        paths.log("measures", "depth", "{comparison}"),
    benchmark:
        paths.benchmark("depth", "comparison"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/depth.py"


rule matching:
    input:
        pairs=comparison_pairs,
        forward=paths.mppc("{comparison}"),
        backward=paths.mppc_reverse("{comparison}"),
    output:
        out=paths.matching("{comparison}"),
        table=paths.matching_table("{comparison}"),
    params:
        thresholds=as_param(config["measures"]["thresholds"]),
        spec=comparison_spec,
        a_stores=matched_store_param("a"),
        b_stores=matched_store_param("b"),
    log:
        paths.log("measures", "matching", "{comparison}"),
    benchmark:
        paths.benchmark("matching", "comparison"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/matching.py"


rule cka:
    input:
        a_input=cka_input("a"),
        b_input=cka_input("b"),
    output:
        out=paths.cka("{comparison}"),
    params:
        a_stores=cka_stores("a"),
        b_stores=cka_stores("b"),
        options=cka_params,
    wildcard_constraints:
        comparison=one_of(CKA_COMPARISONS),
    log:
        paths.log("measures", "cka", "{comparison}"),
    benchmark:
        paths.benchmark("cka", "comparison"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/cka.py"


rule svcca_rsa:
    input:
        matches=paths.matching_table("{comparison}"),
        a_input=matched_stores("a"),
        b_input=matched_stores("b"),
    output:
        out=paths.svcca_rsa("{comparison}"),
    params:
        a_stores=matched_store_param("a"),
        b_stores=matched_store_param("b"),
        options=matched_params,
    wildcard_constraints:
        comparison=one_of(MATCHED_COMPARISONS),
    log:
        paths.log("measures", "svcca_rsa", "{comparison}"),
    benchmark:
        paths.benchmark("svcca_rsa", "comparison"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/svcca_rsa.py"
