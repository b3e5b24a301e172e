"""The report's numbers (summary.json) and figures, recomputed from the MPPC and complexity tables."""
import json

import click

from universality.core.cli import entry
from universality.report import figures
from universality.report import page as report
from universality.core import store


@click.command()
@click.option("--forward", required=True, help="space-separated MPPC tables A->B, in the order of setup's comparisons")
@click.option("--backward", required=True, help="space-separated MPPC tables B->A, same order")
@click.option("--complexity", default="", help="space-separated complexity tables, in the order of plan.complexity")
@click.option("--setup", required=True, help='JSON: {"comparisons", "layers", "plan", "report"} (the rule\'s params)')
@click.option("--summary", required=True, type=click.Path(dir_okay=False), help="output: summary.json")
@click.option("--distributions", type=click.Path(dir_okay=False))
@click.option("--difference", type=click.Path(dir_okay=False))
@click.option("--depth", type=click.Path(dir_okay=False))
@click.option("--layer-groups", type=click.Path(dir_okay=False))
@click.option("--forward-reverse", type=click.Path(dir_okay=False))
@click.option("--complexity-figure", type=click.Path(dir_okay=False))
def main(forward, backward, complexity, setup, summary, distributions, difference, depth, layer_groups,
         forward_reverse, complexity_figure):
    s = json.loads(setup)
    comps, plan, layers = s["comparisons"], s["plan"], s["layers"]
    names = plan["main"] + plan["nulls"]
    fwd, rev = forward.split(), backward.split()
    if len(fwd) != len(names) or len(rev) != len(names):
        raise click.BadParameter(f"{len(fwd)} / {len(rev)} tables for comparisons {names}", param_hint="--forward")
    tables = {n: (report.read_table(f), report.read_table(r)) for n, f, r in zip(names, fwd, rev)}
    sources = ["/".join(map(str, x)) for x in plan["complexity"]]
    scores = {src: report.read_complexity(p) for src, p in zip(sources, complexity.split())}
    numbers = report.summarize({"comparisons": comps}, plan, tables, scores)
    store.write_json(summary, numbers)

    figures.distributions(tables, plan, comps, distributions)
    if plan["differences"]:
        panels = [(report.paired_difference(tables[d["cross"]][0], tables[d["skyline"]][0]), d)
                  for d in numbers["differences"]]
        figures.difference(panels, comps, difference)
    figures.depth(tables, plan, comps, layers, depth)
    figures.layer_groups(tables, plan, comps, layers, s["report"]["layer_groups"], layer_groups)
    figures.forward_reverse(tables, plan, comps, forward_reverse)
    if scores:
        joined = {(src, n): report.complexity_join(scores[src], tables[n][0])
                  for src in scores for n in numbers["complexity"].get(src, {})}
        figures.complexity(joined, numbers["complexity"], comps, s["report"]["top_k"], complexity_figure)
    click.echo(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    entry(main, globals())
