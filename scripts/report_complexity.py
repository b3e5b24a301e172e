"""Complexity scores of every feature of one model's SAEs (token-identity share, distinct top tokens)."""
import click

from universality.core.cli import entry
from universality.report import complexity
from universality.core import store


@click.command()
@click.option("--stores", required=True, help="space-separated feature stores, one per layer (features/{model}/resid/L{l}/seed{s}.zarr)")
@click.option("--layers", required=True, help="comma-separated layers, in the order of --stores")
@click.option("--tokens", required=True, type=click.Path(exists=True), help="the eval token set (tokens/eval.zarr)")
@click.option("--top-k", default=10, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output table (.csv.gz)")
def main(stores, layers, tokens, top_k, out):
    paths, layer_ids = stores.split(), [int(x) for x in layers.split(",")]
    if len(paths) != len(layer_ids):
        raise click.BadParameter(f"{len(paths)} stores for {len(layer_ids)} layers", param_hint="--layers")
    table = complexity.score_stores(dict(zip(layer_ids, paths)), tokens, top_k)
    store.write_csv_gz(out, table)
    click.echo(table.describe().to_string())


if __name__ == "__main__":
    entry(main, globals())
