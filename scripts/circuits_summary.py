"""Figures of every analysed model and results/circuits/summary.json (findings + figure paths)."""
import os

import click
import pandas as pd

from universality.circuits import figures as figs
from universality.circuits import induction as circuits
from universality.core import store
from universality.core.cli import entry
from universality.core.paths import ResultPaths


@click.command()
@click.option("--summaries", required=True, help="space-separated per-model circuits/{model}/summary.json")
@click.option("--summary", required=True, type=click.Path(dir_okay=False), help="circuits/summary.json")
@click.option("--figures", required=True, help="space-separated PNG paths this command must write")
def main(summaries, summary, figures):
    paths = ResultPaths(os.path.dirname(os.path.dirname(summary)))
    if paths.circuits_summary() != summary:
        raise click.BadParameter(f"{summary} is not <results>/circuits/summary.json", param_hint="--summary")
    per_model = [store.read_json(p) for p in summaries.split()]
    by_arch = {"mamba": [s for s in per_model if s["arch"] == "mamba"],
               "gpt_neox": [s for s in per_model if s["arch"] == "gpt_neox"]}
    written, captions, tables = [], {}, []

    def out(path):
        written.append(path)
        return path

    for s in by_arch["mamba"]:
        t = {n: pd.read_csv(paths.circuit_table(s["model"], n)) for n in ("state", "ssm_in", "conv_in", "ioi")}
        tables += [paths.circuit_table(s["model"], n) for n in t]
        with store.atomic_output(out(paths.circuit_figure(s["model"], "state_patching"))) as tmp:
            figs.mamba_state(t["state"], s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: SSM-state path patching per layer and distance"
        with store.atomic_output(out(paths.circuit_figure(s["model"], "off_by_one"))) as tmp:
            figs.mamba_offbyone(t["ssm_in"], t["conv_in"], s["key_layer"], s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: SSM input c per layer and position; conv input x at the key layer"
        with store.atomic_output(out(paths.circuit_figure(s["model"], "ioi"))) as tmp:
            figs.mamba_ioi(t["ioi"], s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: IOI-style prompts, SSM input c per layer and position"
    for s in by_arch["gpt_neox"]:
        names = ("head_scores", "head_patching")
        scores, patching = (pd.read_csv(paths.circuit_table(s["model"], n)) for n in names)
        tables += [paths.circuit_table(s["model"], n) for n in names]
        with store.atomic_output(out(paths.circuit_figure(s["model"], "heads"))) as tmp:
            figs.neox_heads(scores, patching, s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: previous-token / induction scores and head patching"
    primary = {arch: (ss[0] if ss else None) for arch, ss in by_arch.items()}
    with store.atomic_output(out(paths.induction_figure())) as tmp:
        figs.induction_circuits(primary["mamba"], primary["gpt_neox"], tmp)
    captions[written[-1]] = "Induction circuits side by side (paper Fig. 7), from our numbers"
    if sorted(written) != sorted(figures.split()):
        raise click.ClickException(f"figures written {sorted(written)} != figures declared {sorted(figures.split())}")
    findings = [circuits.describe_mamba(s) for s in by_arch["mamba"]]
    findings += [circuits.describe_neox(s) for s in by_arch["gpt_neox"]]
    info = {
        "primary": {arch: (s["model"] if s else None) for arch, s in primary.items()},
        "mamba": {s["model"]: s for s in by_arch["mamba"]},
        "gpt_neox": {s["model"]: s for s in by_arch["gpt_neox"]},
        "findings": findings,
        "figures": [{"path": p, "caption": captions[p]} for p in written],
        "tables": tables,
    }
    store.write_json(summary, info)
    click.echo("\n\n".join(findings))


if __name__ == "__main__":
    entry(main, globals())
