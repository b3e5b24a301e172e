"""SVCCA and RSA of a comparison's one-to-one matched features per layer pair, with permutation p-values."""
import json

import click
import pandas as pd

from universality.compare import layer_maps
from universality.core import store
from universality.core.cli import entry


@click.command()
@click.option("--comparison", required=True)
@click.option("--matches", required=True, type=click.Path(exists=True), help="measures/matching/{comparison}.csv.gz")
@click.option("--a-stores", required=True, help="JSON {layer: feature store} of A")
@click.option("--b-stores", required=True, help="JSON {layer: feature store} of B")
@click.option("--options", required=True, help="JSON: cka_tokens, permutations, seed, svcca_dims, rsa_features")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(comparison, matches, a_stores, b_stores, options, out):
    o = json.loads(options)
    stores = [{int(k): v for k, v in json.loads(s).items()} for s in (a_stores, b_stores)]
    t = layer_maps.matched_table(pd.read_csv(matches), *stores, tokens=o["cka_tokens"], dims=o["svcca_dims"],
                                 rsa_features=o["rsa_features"], permutations=o["permutations"], seed=o["seed"])
    with store.atomic_output(out) as tmp:
        t.to_csv(tmp, index=False)
    click.echo(f"{comparison}\n{t.to_string(index=False)}")


if __name__ == "__main__":
    entry(main, globals())
