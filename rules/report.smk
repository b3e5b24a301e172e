# The universality report (issue 5): numbers, figures, feature-pair cards, complexity, the page.
# Helpers (REPORT plan, feature_stores, report_figure_outputs) are in rules/common.smk.


rule report_complexity:
    input:
        stores=lambda w: feature_stores(w.model, w.seed),
        tokens=R("tokens", "eval.zarr"),
    output:
        out=R("report", "complexity", "{model}", "seed{seed}.csv.gz"),
    params:
        layers=lambda w: layers_csv(w.model),
        top_k=config["report"]["top_k"],
    log:
        R("logs", "report", "complexity", "{model}", "seed{seed}.log"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_complexity.py"


rule report_cards:
    input:
        forward=R("mppc", "{comparison}.csv.gz"),
        stores_a=lambda w: feature_stores(config["comparisons"][w.comparison]["a"], config["comparisons"][w.comparison]["seed_a"]),
        stores_b=lambda w: feature_stores(config["comparisons"][w.comparison]["b"], config["comparisons"][w.comparison]["seed_b"]),
        tokens=R("tokens", "eval.zarr"),
        tokenizer=R("tokenizer", "tokenizer.json"),
    output:
        out=R("report", "cards", "{comparison}.json"),
    params:
        layers_a=lambda w: layers_csv(config["comparisons"][w.comparison]["a"]),
        layers_b=lambda w: layers_csv(config["comparisons"][w.comparison]["b"]),
        options=as_param({k: config["report"][k] for k in ("card_bins", "cards_per_bin", "top_k", "context", "seed")}),
    log:
        R("logs", "report", "cards", "{comparison}.log"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_cards.py"


rule report_figures:
    input:
        forward=[R("mppc", f"{c}.csv.gz") for c in REPORT["main"] + REPORT["nulls"]],
        backward=[R("mppc", f"{c}.reverse.csv.gz") for c in REPORT["main"] + REPORT["nulls"]],
        complexity=[R("report", "complexity", m, f"seed{s}.csv.gz") for m, s in REPORT["complexity"]],
    output:
        summary=R("report", "summary.json"),
        **report_figure_outputs(),
    params:
        setup=report_setup(),
    log:
        R("logs", "report", "figures.log"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_figures.py"


rule report_page:
    input:
        summary=rules.report_figures.output.summary,
        figures=[R("report", "figures", f"{f}.png") for f in REPORT["figures"]],
        captions=[caption(f) for f in REPORT["figures"]],
        cards=[R("report", "cards", f"{c}.json") for c in REPORT["cards"]],
        circuits=circuit_targets(),
    output:
        page=R("report", "index.html"),
    params:
        setup=as_param({"plan": REPORT, "report": config["report"], "results": config["results"]}),
    log:
        R("logs", "report", "page.log"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_page.py"
