"""Depth statistics and the App. C numbers of a comparison, both directions, from its MPPC tables."""
import json

import click

from universality.compare import depth
from universality.core import store
from universality.core.cli import entry
from universality.report.page import read_table


@click.command()
@click.option("--comparison", required=True)
@click.option("--forward", required=True, type=click.Path(exists=True), help="mppc/{comparison}.csv.gz")
@click.option("--backward", required=True, type=click.Path(exists=True), help="mppc/{comparison}.reverse.csv.gz")
@click.option("--layers", required=True, help='JSON {"a": [layers], "b": [layers]}')
@click.option("--coverage", required=True, type=float, help="App. C: share the first B layers must hold")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(comparison, forward, backward, layers, coverage, out):
    lay = json.loads(layers)
    info = {"comparison": comparison, "coverage": coverage}
    for name, path, src, dst in (("forward", forward, "a", "b"), ("reverse", backward, "b", "a")):
        t = read_table(path)
        info[name] = {**depth.depth_stats(t, lay[src], lay[dst]), "app_c": depth.app_c(t, lay[src], lay[dst], coverage)}
    store.write_json(out, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
