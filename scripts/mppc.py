"""Reduce a comparison's layer pairs to MPPC tables (forward A->B, reverse B->A) and a summary."""
import json

import click

from universality.core.cli import entry
from universality.compare import mppc
from universality.core import store


@click.command()
@click.option("--comparison", required=True)
@click.option("--pairs", required=True, help="space-separated pair files (pearson/{comparison}/A{la}_B{lb}.npz)")
@click.option("--spec", required=True, help="the comparison's config entry as JSON (kind, shift)")
@click.option("--a-stores", required=True, help="JSON {layer: store} of side A (what the pairs must come from)")
@click.option("--b-stores", required=True, help="JSON {layer: store} of side B")
@click.option("--forward", required=True, type=click.Path(dir_okay=False))
@click.option("--backward", required=True, type=click.Path(dir_okay=False))
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
def main(comparison, pairs, spec, a_stores, b_stores, forward, backward, summary):
    spec = json.loads(spec)
    results = mppc.load_pairs(pairs.split(), spec["kind"], spec["shift"], json.loads(a_stores), json.loads(b_stores))
    fwd, rev = mppc.reduce(results)
    for table, path in ((fwd, forward), (rev, backward)):
        store.write_csv_gz(path, table)
    info = {"comparison": comparison, "forward": mppc.summary(fwd), "reverse": mppc.summary(rev)}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
