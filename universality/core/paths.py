"""Every path of the file contracts (docs/architecture.md, "File contracts"), in one place.

Rules and scripts build result paths only through :class:`ResultPaths`, so a contract changes in
one line. Arguments are wildcard values; a rule's wildcard pattern is the same call with the
wildcard names, e.g. ``paths.sae("{model}", "{site}", "{layer}", "{seed}")`` is
``saes/{model}/{site}/L{layer}/seed{seed}`` under the results root. Directory outputs carry no
trailing slash (Snakemake's ``directory()`` wants none).
"""
from __future__ import annotations

import os


def layer_store(site_dir: str, layer) -> str:
    """The Zarr store of ``layer`` inside an activations site directory (``.../{site}/L{layer}.zarr``)."""
    return os.path.join(site_dir, f"L{layer}.zarr")


class ResultPaths:
    """Paths under the results root ``root`` (``config["results"]``), one method per contract."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, *parts: str) -> str:
        """A path under the results root."""
        return os.path.join(self.root, *parts)

    def log(self, *parts: str) -> str:
        """``logs/{parts...}.log``: a rule's log, named after the rule and its wildcards."""
        return self("logs", *parts[:-1], f"{parts[-1]}.log")

    def benchmark(self, rule: str, *wildcards: str) -> str:
        """``benchmarks/{rule}/{w1}={{w1}},{w2}={{w2}}.tsv``: a job's Snakemake ``benchmark:`` record
        (wall s, max RSS MiB, CPU s; read by ``benchmarks/job_times.py``). ``wildcards`` are the
        rule's wildcard names; a rule without wildcards writes ``benchmarks/{rule}/job.tsv``."""
        name = ",".join(f"{w}={{{w}}}" for w in sorted(wildcards)) or "job"
        return self("benchmarks", rule, f"{name}.tsv")

    def sae_log(self, rule: str, model, site, layer, seed) -> str:
        """The log of a per-SAE job (train_sae, features)."""
        return self.log(rule, model, site, f"L{layer}", f"seed{seed}")

    def pearson_log(self, comparison, la, lb) -> str:
        return self.log("pearson", comparison, f"A{la}_B{lb}")

    def complexity_log(self, model, seed) -> str:
        return self.log("report", "complexity", model, f"seed{seed}")

    # --- data: corpus, tokenizer, token sets, activations ---

    def documents(self) -> str:
        return self("corpus", "documents.jsonl")

    def corpus_manifest(self) -> str:
        return self("corpus", "manifest.json")

    def tokenizer(self) -> str:
        return self("tokenizer", "tokenizer.json")

    def tokens(self, split) -> str:
        """Token set of ``split`` (train | eval): a Zarr group ``ids`` + ``offsets``."""
        return self("tokens", f"{split}.zarr")

    def tokens_manifest(self, split) -> str:
        return self("tokens", f"{split}.json")

    def token_budget(self) -> str:
        """The token-budget check's record (scored tokens and documents per split); an input of
        the model rules, so that every budget is checked before any model trains."""
        return self("tokens", "budget.json")

    def activations(self, model, site) -> str:
        """The directory of ``L{layer}.zarr`` stores of one (model, site)."""
        return self("activations", model, site)

    def activations_manifest(self, model, site) -> str:
        return self("activations", model, f"{site}.json")

    def activation_layer(self, model, site, layer) -> str:
        return layer_store(self.activations(model, site), layer)

    # --- zoo: trained toy models and hub checkpoints ---

    def model(self, model) -> str:
        """A ``save_pretrained`` directory."""
        return self("models", model)

    def model_metrics(self, model) -> str:
        return self("models", f"{model}.json")

    # --- sae: SAEs and their feature activations ---

    def sae(self, model, site, layer, seed) -> str:
        """An SAE directory: ``cfg.json``, ``sae_weights.safetensors``, ``metrics.json``."""
        return self("saes", model, site, f"L{layer}", f"seed{seed}")

    def features(self, model, site, layer, seed) -> str:
        """Sparse CSR feature activations of one SAE over the eval tokens (Zarr)."""
        return self("features", model, site, f"L{layer}", f"seed{seed}.zarr")

    def features_manifest(self, model, site, layer, seed) -> str:
        return self("features", model, site, f"L{layer}", f"seed{seed}.json")

    # --- the SAE-invariance sweep (issue 19): variants of one base SAE vs the base ---

    def sweep_sae(self, variant) -> str:
        """A sweep variant's SAE directory (the layout of :meth:`sae`)."""
        return self("sae_sweep", "saes", variant)

    def sweep_features(self, variant) -> str:
        return self("sae_sweep", "features", f"{variant}.zarr")

    def sweep_features_manifest(self, variant) -> str:
        return self("sae_sweep", "features", f"{variant}.json")

    def sweep_pearson(self, entry) -> str:
        """The base SAE's layer vs a variant's (or the null's): the :meth:`pearson` format."""
        return self("sae_sweep", "pearson", f"{entry}.npz")

    def sweep_mppc(self, entry) -> str:
        """One row per feature of the base SAE: its MPPC in the variant (the :meth:`mppc` format)."""
        return self("sae_sweep", "mppc", f"{entry}.csv.gz")

    def sweep_mppc_reverse(self, entry) -> str:
        return self("sae_sweep", "mppc", f"{entry}.reverse.csv.gz")

    def sweep_mppc_summary(self, entry) -> str:
        return self("sae_sweep", "mppc", f"{entry}.json")

    def sweep_log(self, rule, entry) -> str:
        return self.log("sae_sweep", rule, entry)

    # --- compare: Pearson layer pairs and MPPC tables ---

    def pearson(self, comparison, la, lb) -> str:
        """Row/column max and argmax of one layer pair (A layer ``la``, B layer ``lb``)."""
        return self("pearson", comparison, f"A{la}_B{lb}.npz")

    def mppc(self, comparison) -> str:
        """One row per feature of A: its MPPC and best match in B."""
        return self("mppc", f"{comparison}.csv.gz")

    def mppc_reverse(self, comparison) -> str:
        """The reverse table, one row per feature of B."""
        return self("mppc", f"{comparison}.reverse.csv.gz")

    def mppc_summary(self, comparison) -> str:
        return self("mppc", f"{comparison}.json")

    # --- compare: the measures beside MPPC (compare/depth.py, matching.py, layer_maps.py) ---

    def depth_stats(self, comparison) -> str:
        """Depth statistics and the App. C numbers of both directions."""
        return self("measures", "depth", f"{comparison}.json")

    def matching(self, comparison) -> str:
        """One-to-one matching numbers, mutual best pairs, MPPC's many-to-one distribution."""
        return self("measures", "matching", f"{comparison}.json")

    def matching_table(self, comparison) -> str:
        """The across-layer one-to-one matching, one row per feature of A."""
        return self("measures", "matching", f"{comparison}.csv.gz")

    def cka(self, comparison) -> str:
        """Linear CKA of the residual streams per layer pair, with permutation p-values."""
        return self("measures", "cka", f"{comparison}.csv")

    def svcca_rsa(self, comparison) -> str:
        """SVCCA and RSA of the matched features per layer pair, with permutation p-values."""
        return self("measures", "svcca_rsa", f"{comparison}.csv")

    def measures_summary(self) -> str:
        """The report's numbers of every measure (report_measures)."""
        return self("report", "measures.json")

    # --- circuits ---

    def circuit_table(self, model, experiment) -> str:
        return self("circuits", model, f"{experiment}.csv")

    def circuit_figure(self, model, stem) -> str:
        return self("circuits", model, f"{stem}.png")

    def circuit_summary(self, model) -> str:
        """One analysed model's findings."""
        return self("circuits", model, "summary.json")

    def circuits_summary(self) -> str:
        """Findings, figures and tables of every analysed model."""
        return self("circuits", "summary.json")

    def induction_figure(self) -> str:
        return self("circuits", "induction_circuits.png")

    # --- report ---

    def complexity(self, model, seed) -> str:
        return self("report", "complexity", model, f"seed{seed}.csv.gz")

    def cards(self, comparison) -> str:
        return self("report", "cards", f"{comparison}.json")

    def report_summary(self) -> str:
        return self("report", "summary.json")

    def report_sae(self) -> str:
        """SAE quality per (model, layer, seed) and the sweep's MPPC per variant (report_sae)."""
        return self("report", "sae.json")

    def report_figure(self, name) -> str:
        return self("report", "figures", f"{name}.png")

    def report_page(self) -> str:
        return self("report", "index.html")

    # --- report: the LLM judge (issue 17) ---

    def judge_contexts(self, model, seed) -> str:
        """The stratified sample of features of one SAE seed of a model and the samples the judge reads."""
        return self("report", "judge", "contexts", model, f"seed{seed}.json")

    def judge_scores_dir(self, judge, prompts, model, seed) -> str:
        """The score files ``L{layer}.csv`` of one (judge, prompt set, model, SAE seed)."""
        return self("report", "judge", "scores", judge, prompts, model, f"seed{seed}")

    def judge_scores(self, judge, prompts, model, seed, layer) -> str:
        """One row per scored feature of one (judge, prompt set, model, SAE seed, layer)."""
        return os.path.join(self.judge_scores_dir(judge, prompts, model, seed), f"L{layer}.csv")

    def judge_manifest(self, judge, prompts, model, seed) -> str:
        """The tracked lineage file of a score directory: judge, prompt hash, counts, files."""
        return self.judge_scores_dir(judge, prompts, model, seed) + ".json"

    def judge_cache(self, judge, model, seed) -> str:
        """Answers as they arrive (not a job output: survives a killed job)."""
        return self("report", "judge", "cache", judge, model, f"seed{seed}.jsonl")

    def judge_summary(self) -> str:
        return self("report", "judge", "summary.json")

    def judge_log(self, rule, *parts) -> str:
        return self.log("report", rule, *parts)
