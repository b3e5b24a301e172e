"""The report's numbers and figures of the measures beside MPPC (report/measures.json + PNGs)."""
import json

import click
import pandas as pd

from universality.core import store
from universality.core.cli import entry
from universality.report import measures
from universality.report.page import read_table


def _named(names, paths, what):
    files = paths.split()
    if len(files) != len(names):
        raise click.BadParameter(f"{len(files)} {what} files for comparisons {names}", param_hint=f"--{what}")
    return dict(zip(names, files))


@click.command()
@click.option("--depth", required=True, help="space-separated measures/depth/{c}.json, in setup's order")
@click.option("--matching", required=True, help="space-separated measures/matching/{c}.json, same order")
@click.option("--forward", required=True, help="space-separated mppc/{c}.csv.gz, same order")
@click.option("--cka", default="", help="space-separated measures/cka/{c}.csv, in setup's cka order")
@click.option("--svcca-rsa", default="", help="space-separated measures/svcca_rsa/{c}.csv, in setup's matched order")
@click.option("--setup", required=True, help='JSON {"comparisons", "layers", "names", "cka", "matched", "thresholds"}')
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
@click.option("--similarity-maps", required=True, type=click.Path(dir_okay=False))
@click.option("--matching-shares", required=True, type=click.Path(dir_okay=False))
def main(depth, matching, forward, cka, svcca_rsa, setup, summary, similarity_maps, matching_shares):
    s = json.loads(setup)
    names, comps = s["names"], s["comparisons"]
    dep = {n: store.read_json(p) for n, p in _named(names, depth, "depth").items()}
    mat = {n: store.read_json(p) for n, p in _named(names, matching, "matching").items()}
    fwd = {n: read_table(p) for n, p in _named(names, forward, "forward").items()}
    ck = {n: pd.read_csv(p) for n, p in _named(s["cka"], cka, "cka").items()}
    sr = {n: pd.read_csv(p) for n, p in _named(s["matched"], svcca_rsa, "svcca-rsa").items()}
    numbers = measures.summarize({n: comps[n] for n in names}, dep, mat, ck, sr, fwd)
    store.write_json(summary, {"thresholds": s["thresholds"], "coverage": s["coverage"], "comparisons": numbers})
    layers = {m: list(v) for m, v in s["layers"].items()}
    measures.similarity_maps(numbers, ck, sr, comps, layers, s["thresholds"][0], similarity_maps)
    measures.matching_shares(numbers, comps, s["thresholds"], matching_shares)
    click.echo(json.dumps({n: {k: v for k, v in r.items() if k in ("mppc", "cka", "svcca", "rsa")}
                           for n, r in numbers.items()}, indent=2))


if __name__ == "__main__":
    entry(main, globals())
