"""Reduce a comparison's layer pairs to MPPC tables (forward A->B, reverse B->A) and a summary."""
import json

import click

from universality.core.cli import entry
from universality.compare import mppc
from universality.compare import pearson
from universality.core import store


@click.command()
@click.option("--comparison", required=True)
@click.option("--pairs", required=True, help="space-separated pair files (pearson/{comparison}/A{la}_B{lb}.npz)")
@click.option("--forward", required=True, type=click.Path(dir_okay=False))
@click.option("--backward", required=True, type=click.Path(dir_okay=False))
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
def main(comparison, pairs, forward, backward, summary):
    results = {}
    for path in pairs.split():
        r = pearson.load_result(path)
        results[(int(r["la"]), int(r["lb"]))] = r
    fwd, rev = mppc.reduce(results)
    for table, path in ((fwd, forward), (rev, backward)):
        store.write_csv_gz(path, table)
    info = {"comparison": comparison, "forward": mppc.summary(fwd), "reverse": mppc.summary(rev)}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
