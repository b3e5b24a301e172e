# The universality report (issue 5): numbers, figures, feature-pair cards, complexity, the page
# (universality/report).
include: "helpers/report.smk"


rule report_complexity:
    input:
        stores=complexity_stores,
        tokens=paths.tokens("eval"),
    output:
        out=paths.complexity("{model}", "{seed}"),
    params:
        layers=layer_list,
        top_k=config["report"]["top_k"],
    log:
        paths.complexity_log("{model}", "{seed}"),
    benchmark:
        paths.benchmark("report_complexity", "model", "seed"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_complexity.py"


rule report_cards:
    input:
        forward=paths.mppc("{comparison}"),
        stores_a=card_stores("a"),
        stores_b=card_stores("b"),
        tokens=paths.tokens("eval"),
        tokenizer=paths.tokenizer(),
    output:
        out=paths.cards("{comparison}"),
    params:
        layers_a=card_layers("a"),
        layers_b=card_layers("b"),
        options=as_param({k: config["report"][k] for k in CARD_OPTIONS}),
    log:
        paths.log("report", "cards", "{comparison}"),
    benchmark:
        paths.benchmark("report_cards", "comparison"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_cards.py"


rule report_figures:
    input:
        forward=[paths.mppc(c) for c in REPORT["main"] + REPORT["nulls"]],
        backward=[paths.mppc_reverse(c) for c in REPORT["main"] + REPORT["nulls"]],
        complexity=[paths.complexity(m, s) for m, s in REPORT["complexity"]],
    output:
        summary=paths.report_summary(),
        **report_figure_outputs(),
    params:
        setup=report_setup(),
    log:
        paths.log("report", "figures"),
    benchmark:
        paths.benchmark("report_figures"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_figures.py"


rule report_sae:
    input:
        saes=sae_report_dirs(),
        variants=[paths.sweep_sae(v) for v in SWEEP_VARIANTS],
        forward=[paths.sweep_mppc(e) for e in SWEEP_ENTRIES],
        backward=[paths.sweep_mppc_reverse(e) for e in SWEEP_ENTRIES],
    output:
        summary=paths.report_sae(),
        **sae_report_outputs(),
    params:
        setup=sae_report_setup(),
    log:
        paths.log("report", "sae"),
    benchmark:
        paths.benchmark("report_sae"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_sae.py"


rule report_page:
    input:
        summary=rules.report_figures.output.summary,
        sae=rules.report_sae.output.summary,
        sae_figure=sae_page_figures(),
        figures=[paths.report_figure(f) for f in REPORT["figures"]],
        captions=[caption(f) for f in REPORT["figures"]],
        cards=[paths.cards(c) for c in REPORT["cards"]],
        circuits=circuit_targets(),
        measures=paths.measures_summary(),
        measure_figures=[paths.report_figure(f) for f in ("similarity_maps", "matching_shares")],
        **judge_page_inputs(),
    output:
        page=paths.report_page(),
    params:
        setup=as_param({"plan": REPORT, "report": config["report"], "results": config["results"]}),
    log:
        paths.log("report", "page"),
    benchmark:
        paths.benchmark("report_page"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_page.py"


# The measures beside MPPC (depth, one-to-one matching, CKA, SVCCA / RSA): numbers and depth maps.
rule report_measures:
    input:
        **measure_inputs(),
        forward=[paths.mppc(c) for c in COMPARISONS],
    output:
        summary=paths.measures_summary(),
        similarity_maps=paths.report_figure("similarity_maps"),
        matching_shares=paths.report_figure("matching_shares"),
    params:
        setup=measures_setup(),
    log:
        paths.log("report", "measures"),
    benchmark:
        paths.benchmark("report_measures"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_measures.py"


# The LLM judge (issue 17): the sample and its contexts (judge-independent), the scores (one job
# per judge, prompt set, model and SAE seed; answers cached as they arrive), then the judge's
# figures and summary. Changing the judge reruns judge_scores, report_judge and report_page only.
rule judge_contexts:
    input:
        stores=complexity_stores,
        forward=judge_stratify_table,
        tokens=paths.tokens("eval"),
        tokenizer=paths.tokenizer(),
    output:
        out=paths.judge_contexts("{model}", "{seed}"),
    params:
        layers=layer_list,
        options=judge_contexts_options(),
    log:
        paths.judge_log("judge_contexts", "{model}", "seed{seed}"),
    benchmark:
        paths.benchmark("judge_contexts", "model", "seed"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/judge_contexts.py"


rule judge_scores:
    input:
        contexts=paths.judge_contexts("{model}", "{seed}"),
    output:
        out=directory(paths.judge_scores_dir("{judge}", "{prompts}", "{model}", "{seed}")),
        manifest=paths.judge_manifest("{judge}", "{prompts}", "{model}", "{seed}"),
    params:
        options=judge_score_options(),
        # the prompt files' content, as a param rather than inputs: their absolute paths in the
        # source tree would make a moved project rerun every score
        prompt_hash=prompt_hash(JUDGE["prompts"]),
        cache=paths.judge_cache("{judge}", "{model}", "{seed}"),
    wildcard_constraints:
        judge=re.escape(JUDGE["judge"] or "none"),
        prompts=re.escape(JUDGE["prompts"]),
    log:
        paths.judge_log("judge_scores", "{judge}", "{prompts}", "{model}", "seed{seed}"),
    benchmark:
        paths.benchmark("judge_scores", "judge", "prompts", "model", "seed"),
    # 1, not 2: one forward per prompt of a 135M model used 0.9 cores with 2 threads (65 CPU s
    # in 71 s), while holding both, so nothing ran beside it.
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/judge_scores.py"


rule report_judge:
    input:
        **judge_report_inputs(),
    output:
        summary=paths.judge_summary(),
        complexity_figure=report(paths.report_figure("judge_complexity"),
                                 caption="../report/captions/judge_complexity.rst", category="LLM judge"),
        monosemanticity_figure=report(paths.report_figure("judge_monosemanticity"),
                                      caption="../report/captions/judge_monosemanticity.rst", category="LLM judge"),
    params:
        plan=as_param(JUDGE),
        options=as_param(config["judge"]),
    log:
        paths.log("report", "judge"),
    benchmark:
        paths.benchmark("report_judge"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report_judge.py"
