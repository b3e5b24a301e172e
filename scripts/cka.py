"""Linear CKA of two models' residual streams per layer pair, with permutation p-values."""
import json

import click

from universality.compare import layer_maps
from universality.core import store
from universality.core.cli import entry


@click.command()
@click.option("--comparison", required=True)
@click.option("--a-stores", required=True, help="JSON {layer: resid layer store} of A")
@click.option("--b-stores", required=True, help="JSON {layer: resid layer store} of B")
@click.option("--options", required=True, help="JSON: cka_tokens, permutations, seed")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(comparison, a_stores, b_stores, options, out):
    o = json.loads(options)
    stores = [{int(k): v for k, v in json.loads(s).items()} for s in (a_stores, b_stores)]
    t = layer_maps.cka_table(*stores, tokens=o["cka_tokens"], permutations=o["permutations"], seed=o["seed"])
    with store.atomic_output(out) as tmp:
        t.to_csv(tmp, index=False)
    click.echo(f"{comparison}\n{t.to_string(index=False)}")


if __name__ == "__main__":
    entry(main, globals())
