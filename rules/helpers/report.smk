# Helpers of rules/report.smk (report_complexity, report_cards, report_figures, report_page).
from universality.workflow.config import report_plan

REPORT = report_plan(config)
CARD_OPTIONS = ("card_bins", "cards_per_bin", "top_k", "context", "seed")


def report_targets():
    return [paths.report_page()]


def feature_stores(model, seed):
    """The resid SAE feature stores of every layer of ``model`` (SAE ``seed``), in layer order."""
    return [paths.features(model, "resid", l, seed) for l in model_layers(config, model)]


def complexity_stores(wildcards):
    return feature_stores(wildcards.model, wildcards.seed)


def card_stores(side):
    """Input function: the feature stores of side ``side`` ("a" | "b") of a comparison."""

    def inner(wildcards):
        c = config["comparisons"][wildcards.comparison]
        return feature_stores(c[side], c["seed_" + side])

    return inner


def card_layers(side):
    """Param function: the layers of side ``side`` of a comparison, in the order of its stores."""

    def inner(wildcards):
        return layers_csv(config["comparisons"][wildcards.comparison][side])

    return inner


def report_setup():
    """Everything report_figures reads besides its tables (one canonical JSON param)."""
    layers = {m: model_layers(config, m) for m in MODELS}
    return as_param({"comparisons": config["comparisons"], "layers": layers, "plan": REPORT,
                     "report": config["report"]})


def caption(name):
    """The caption of figure ``name`` (in the repository, whatever the working directory), relative
    to the working directory: moving the project together with its results reruns nothing."""
    return os.path.relpath(os.path.join(workflow.basedir, "report", "captions", f"{name}.rst"))


def report_figure_outputs():
    """``{output name: report(png)}`` for the figures of this config's plan."""
    out = {}
    for name in REPORT["figures"]:
        key = "complexity_figure" if name == "complexity" else name
        out[key] = report(paths.report_figure(name), caption=f"../report/captions/{name}.rst",
                          category="Universality (MPPC)")
    return out


# --- the SAE section (issue 19): quality per SAE and the SAE-invariance sweep ---


def sae_report_ids():
    """``[[model, layer, seed], ...]`` of every resid SAE, in the order of :func:`sae_report_dirs`."""
    return [[m, l, seed] for m in MODELS for l in model_layers(config, m) for seed in sae_seeds(config, m)]


def sae_report_dirs():
    return [paths.sae(m, "resid", l, seed) for m, l, seed in sae_report_ids()] if "resid" in config["saes"]["sites"] else []


def sae_report_setup():
    ids = sae_report_ids() if "resid" in config["saes"]["sites"] else []
    # as_param sorts keys: the file order of the inputs travels as explicit lists
    return as_param({"saes": ids, "sweep": SWEEP, "entries": SWEEP_ENTRIES,
                     "entry_order": list(SWEEP_ENTRIES), "variant_order": SWEEP_VARIANTS})


def sae_report_outputs():
    """The sweep figure (a Snakemake report item) when a sweep is configured."""
    if not SWEEP_ENTRIES:
        return {}
    return {"figure": report(paths.report_figure("sae_sweep"), caption="../report/captions/sae_sweep.rst",
                             category="SAE variables (sweep)")}


def sae_page_figures():
    return [paths.report_figure("sae_sweep")] if SWEEP_ENTRIES else []


def measures_setup():
    """report_measures' param: the comparisons, layers, name orders of its inputs, thresholds."""
    return as_param({"comparisons": config["comparisons"], "names": COMPARISONS, "cka": CKA_COMPARISONS,
                     "matched": MATCHED_COMPARISONS, "thresholds": config["measures"]["thresholds"],
                     "coverage": config["measures"]["coverage"],
                     "layers": {m: model_layers(config, m) for m in MODELS}})


# --- the LLM judge (issue 17): judge_contexts, judge_scores, report_judge ---
from universality.report.judge.prompts import prompt_hash
from universality.workflow.judge import judge_plan

JUDGE = judge_plan(config)
JUDGE_SOURCES = {(s["model"], str(s["seed"])): s for s in JUDGE["sources"]}
#: What defines the judge's answers (its identity without secrets, its options): a judge_scores param.
JUDGE_OPTIONS = ("kind", "model", "base_url", "api_key_env", "concurrency", "timeout", "retries")


def judge_source(wildcards):
    return JUDGE_SOURCES[(wildcards.model, wildcards.seed)]


def judge_stratify_table(wildcards):
    """The forward MPPC table whose bins the sample is drawn from."""
    return paths.mppc(judge_source(wildcards)["stratify"])


def judge_contexts_options():
    j, r = config["judge"], config["report"]
    return as_param({"bins": j["bins"], "per_bin": j["per_bin"], "samples": j["samples"], "seed": j["seed"],
                     "context": r["context"]})


def judge_score_options():
    return as_param({k: config["judge"][k] for k in JUDGE_OPTIONS})


def judge_manifests():
    return [paths.judge_manifest(JUDGE["judge"], JUDGE["prompts"], s["model"], s["seed"]) for s in JUDGE["sources"]]


def judge_report_inputs():
    """Everything report_judge reads: scores, samples, MPPC tables and proxy tables of each source."""
    srcs = JUDGE["sources"]
    return {"manifests": judge_manifests(),
            "contexts": [paths.judge_contexts(s["model"], s["seed"]) for s in srcs],
            "forward": sorted({paths.mppc(n) for s in srcs for n in s["comparisons"]}),
            "proxy": [paths.complexity(s["model"], s["seed"]) for s in srcs]}


def judge_page_inputs():
    """report_page's judge inputs (none without a judge)."""
    if not JUDGE["sources"]:
        return {}
    return {"judge": paths.judge_summary(),
            "judge_figures": [paths.report_figure(f) for f in ("judge_complexity", "judge_monosemanticity")]}
