"""The judge's part of the report: Fig. 5a / 5b PNGs and report/judge/summary.json (with cards)."""
import json
from pathlib import Path

import click

from universality.core import store
from universality.report import page as report
from universality.report.judge import figures, scores
from universality.report.judge import summary as judge_summary
from universality.core.cli import entry


@click.command()
@click.option("--manifests", required=True, help="space-separated score manifests, one per source (plan order)")
@click.option("--contexts", required=True, help="space-separated judge_contexts outputs, same order")
@click.option("--forward", required=True, help="space-separated MPPC tables (every comparison of every source)")
@click.option("--proxy", required=True, help="space-separated complexity tables (the proxy), same order as --manifests")
@click.option("--plan", required=True, help="JSON: judge_plan(config)")
@click.option("--options", required=True, help="JSON: the judge section")
@click.option("--summary", required=True, type=click.Path(dir_okay=False), help="output summary.json")
@click.option("--complexity-figure", required=True, type=click.Path(dir_okay=False), help="output Fig. 5a PNG")
@click.option("--monosemanticity-figure", required=True, type=click.Path(dir_okay=False), help="output Fig. 5b PNG")
def main(manifests, contexts, forward, proxy, plan, options, summary, complexity_figure, monosemanticity_figure):
    plan, opts = json.loads(plan), json.loads(options)
    tables = {Path(p).name.split(".")[0]: report.read_table(p) for p in forward.split()}
    out = {"judge": plan["judge"], "prompts": plan["prompts"], "options": opts, "low_mppc": scores.LOW_MPPC,
           "weak": opts["kind"] == "local", "weak_note": judge_summary.WEAK_JUDGE if opts["kind"] == "local" else None,
           "sources": []}
    for i, (src, man, ctx, prox) in enumerate(zip(plan["sources"], manifests.split(), contexts.split(), proxy.split())):
        m = store.read_json(man)
        table = scores.read_scores([str(Path(man[: -len(".json")]) / f) for f in m["files"]])
        forwards = {n: tables[n] for n in src["comparisons"]}
        proxy_table = report.read_complexity(prox)
        s = judge_summary.source_summary(table, forwards, src["roles"], proxy_table)
        s.update(model=src["model"], seed=src["seed"], stratify=src["stratify"], identity=m["identity"],
                 prompt_hash=m["prompt_hash"], seconds=m["seconds"],
                 cards=judge_summary.pick_cards(table, store.read_json(ctx)["features"], forwards, src["stratify"]))
        out["sources"].append(s)
        if i == 0:  # the figures show the first source (the default config has one)
            figures.complexity_figure(table, forwards, src["roles"], proxy_table, plan["judge"], complexity_figure)
            figures.monosemanticity_figure(table, forwards[src["stratify"]], src["stratify"], plan["judge"],
                                           monosemanticity_figure)
    if not out["sources"]:
        raise click.UsageError("report_judge: the plan has no judged source")
    store.write_json(summary, out)
    first = out["sources"][0]
    click.echo(f"{first['features']} features judged by {plan['judge']}; unparseable {first['unparseable']}; "
               f"proxy agreement {json.dumps(first['proxy'])}")


if __name__ == "__main__":
    entry(main, globals())
