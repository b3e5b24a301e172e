"""Figures of every analysed model and results/circuits/summary.json (findings + figure paths)."""
import os

import click
import pandas as pd

from universality.circuits import figures as figs
from universality.circuits import induction as circuits
from universality.circuits import side_by_side, ssm_paths, wkv_paths
from universality.core import store
from universality.core.cli import entry
from universality.core.paths import ResultPaths
from universality.models import registry
from universality.workflow.config import CIRCUIT_KINDS


@click.command()
@click.option("--summaries", required=True, help="space-separated per-model circuits/{model}/summary.json")
@click.option("--summary", required=True, type=click.Path(dir_okay=False), help="circuits/summary.json")
@click.option("--figures", required=True, help="space-separated PNG paths this command must write")
def main(summaries, summary, figures):
    paths = ResultPaths(os.path.dirname(os.path.dirname(summary)))
    if paths.circuits_summary() != summary:
        raise click.BadParameter(f"{summary} is not <results>/circuits/summary.json", param_hint="--summary")
    per_model = [store.read_json(p) for p in summaries.split()]
    # Grouped by the architecture's circuits capability (registry), keyed by architecture in
    # summary.json: {"mamba": {model: ...}, "gpt_neox": {...}, "rwkv": {...}} for the built-in architectures.
    by_kind = {kind: [s for s in per_model if registry.get(s["arch"]).circuits == kind] for kind in CIRCUIT_KINDS}
    archs = [a.name for kind in CIRCUIT_KINDS for a in registry.ARCHITECTURES.values() if a.circuits == kind]
    by_arch = {arch: {} for arch in archs}
    for s in per_model:
        by_arch[s["arch"]][s["model"]] = s
    written, captions, tables = [], {}, []

    def out(path):
        written.append(path)
        return path

    for s in by_kind["ssm"]:
        names = ssm_paths.table_names(s["options"]["broader_variants"])
        t = {n: pd.read_csv(paths.circuit_table(s["model"], n)) for n in names}
        tables += [paths.circuit_table(s["model"], n) for n in names]
        with store.atomic_output(out(paths.circuit_figure(s["model"], "state_patching"))) as tmp:
            figs.mamba_state(t["state"], s["model"], tmp)
        captions[written[-1]] = (f"{s['model']}: SSM state at the final [A] patched per layer and distance "
                                 "(paper Table 1's definition)")
        with store.atomic_output(out(paths.circuit_figure(s["model"], "off_by_one"))) as tmp:
            figs.mamba_offbyone(t["ssm_in"], t["conv_in"], s["key_layer"], s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: SSM input c per layer and position; conv input x at the key layer"
        with store.atomic_output(out(paths.circuit_figure(s["model"], "ioi"))) as tmp:
            figs.mamba_ioi(t["ioi"], s["model"], tmp, s["ioi"]["example"])
        captions[written[-1]] = (f"{s['model']}: IOI ({'templated sentences' if s['ioi']['templated'] else 'random-token frame: ' + s['ioi']['fallback_reason']}), "
                                 "logit changes of IO (left) and S (right) per layer and position (paper Fig. 13)")
    for s in by_kind["heads"]:
        names = ("head_scores", "head_patching", "head_paths")
        scores, patching, head_paths = (pd.read_csv(paths.circuit_table(s["model"], n)) for n in names)
        tables += [paths.circuit_table(s["model"], n) for n in names]
        with store.atomic_output(out(paths.circuit_figure(s["model"], "heads"))) as tmp:
            figs.neox_heads(scores, patching, s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: previous-token / induction scores and head patching"
        with store.atomic_output(out(paths.circuit_figure(s["model"], "head_paths"))) as tmp:
            figs.head_paths(head_paths, s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: path patching from sender heads into the induction heads' q / k / v"
    for s in by_kind["wkv"]:
        names = wkv_paths.table_names(s["options"]["broader_variants"])
        t = {n: pd.read_csv(paths.circuit_table(s["model"], n)) for n in names}
        tables += [paths.circuit_table(s["model"], n) for n in names]
        with store.atomic_output(out(paths.circuit_figure(s["model"], "wkv_state"))) as tmp:
            figs.rwkv_state(t["state"], s["model"], tmp)
        captions[written[-1]] = f"{s['model']}: WKV state read at the final [A] patched per layer and distance"
        with store.atomic_output(out(paths.circuit_figure(s["model"], "wkv_kv_in"))) as tmp:
            figs.rwkv_kv_in(t["kv_in"], s["key_layer"], s["model"], tmp)
        captions[written[-1]] = (f"{s['model']}: k / v at one position of the key layer, into the WKV state only, "
                                 "per distance (both corruptions) and k vs v")
    first = {kind: (ss[0] if ss else None) for kind, ss in by_kind.items()}
    with store.atomic_output(out(paths.induction_figure())) as tmp:
        figs.induction_circuits(first["ssm"], first["heads"], tmp)
    captions[written[-1]] = "Induction circuits side by side (paper Fig. 7), from our numbers"
    if sorted(written) != sorted(figures.split()):
        raise click.ClickException(f"figures written {sorted(written)} != figures declared {sorted(figures.split())}")
    findings = [circuits.describe_mamba(s) for s in by_kind["ssm"]]
    findings += [circuits.describe_neox(s) for s in by_kind["heads"]]
    findings += [wkv_paths.describe_rwkv(s) for s in by_kind["wkv"]]
    info = {
        "primary": {arch: next(iter(ms), None) for arch, ms in by_arch.items()},
        **by_arch,
        "findings": findings,
        "comparison": side_by_side.comparison(first["ssm"], first["heads"], first["wkv"]),
        "figures": [{"path": p, "caption": captions[p]} for p in written],
        "tables": tables,
    }
    store.write_json(summary, info)
    click.echo("\n\n".join(findings))


if __name__ == "__main__":
    entry(main, globals())
