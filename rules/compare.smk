rule pearson_pair:
    input:
        a_input=comparison_input("a"),
        b_input=comparison_input("b"),
    output:
        out=R("pearson", "{comparison}", "A{la}_B{lb}.npz"),
    params:
        a_store=lambda w: comparison_store(w.comparison, "a", w.la),
        b_store=lambda w: comparison_store(w.comparison, "b", w.lb),
        options=comparison_params,
    log:
        R("logs", "pearson", "{comparison}", "A{la}_B{lb}.log"),
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
        forward=R("mppc", "{comparison}.csv.gz"),
        backward=R("mppc", "{comparison}.reverse.csv.gz"),
        summary=R("mppc", "{comparison}.json"),
    params:
        comparison=lambda w: as_param(config["comparisons"][w.comparison]),
    log:
        R("logs", "mppc", "{comparison}.log"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/mppc.py"
