"""One-to-one matching of a comparison from its layer pairs' top-k candidates, mutual best
pairs and MPPC's many-to-one distribution."""
import json

import click

from universality.compare import matching
from universality.compare.mppc import load_pairs
from universality.core import store
from universality.core.cli import entry
from universality.report.page import read_table


@click.command()
@click.option("--comparison", required=True)
@click.option("--pairs", required=True, help="space-separated pair files (pearson/{comparison}/A{la}_B{lb}.npz)")
@click.option("--spec", required=True, help="the comparison's config entry as JSON (kind, shift)")
@click.option("--a-stores", required=True, help="JSON {layer: store} of side A (what the pairs must come from)")
@click.option("--b-stores", required=True, help="JSON {layer: store} of side B")
@click.option("--forward", required=True, type=click.Path(exists=True))
@click.option("--backward", required=True, type=click.Path(exists=True))
@click.option("--thresholds", required=True, help="JSON list of r thresholds")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the numbers (JSON)")
@click.option("--table", required=True, type=click.Path(dir_okay=False), help="the matching (.csv.gz)")
def main(comparison, pairs, spec, a_stores, b_stores, forward, backward, thresholds, out, table):
    spec = json.loads(spec)
    results = load_pairs(pairs.split(), spec["kind"], spec["shift"], json.loads(a_stores), json.loads(b_stores))
    matches, numbers = matching.solve(results, json.loads(thresholds))
    fwd, rev = read_table(forward), read_table(backward)
    mppc = fwd["mppc"].dropna()
    numbers["mppc_share_above"] = {str(t): float((mppc > t).sum() / max(numbers["valid_a"], 1))
                                   for t in json.loads(thresholds)}
    info = {"comparison": comparison, **numbers, "mutual_best": matching.mutual_best(fwd, rev),
            "many_to_one": matching.many_to_one(fwd)}
    store.write_csv_gz(table, matches)  # byte-reproducible (gzip header without time or name)
    store.write_json(out, info)
    click.echo(json.dumps({k: v for k, v in info.items() if k != "per_pair"}, indent=2))


if __name__ == "__main__":
    entry(main, globals())
