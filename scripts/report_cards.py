"""Feature-pair cards of one comparison: sampled matched pairs and their top activating contexts."""
import json

import click

from universality.core.cli import entry
from universality.report import cards
from universality.report import page as report
from universality.core import store


@click.command()
@click.option("--forward", required=True, type=click.Path(exists=True), help="the comparison's MPPC table A->B")
@click.option("--stores-a", required=True, help="space-separated feature stores of A, one per layer")
@click.option("--layers-a", required=True, help="comma-separated layers of A, in the order of --stores-a")
@click.option("--stores-b", required=True, help="space-separated feature stores of B, one per layer")
@click.option("--layers-b", required=True, help="comma-separated layers of B, in the order of --stores-b")
@click.option("--tokens", required=True, type=click.Path(exists=True), help="the eval token set (tokens/eval.zarr)")
@click.option("--tokenizer", required=True, type=click.Path(exists=True), help="tokenizer.json")
@click.option("--options", required=True, help='JSON: {"card_bins", "cards_per_bin", "top_k", "context", "seed"}')
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output cards (.json)")
def main(forward, stores_a, layers_a, stores_b, layers_b, tokens, tokenizer, options, out):
    opts = json.loads(options)
    decode = cards.token_decoder(tokenizer)

    def reader(stores, layers):
        return cards.ContextReader(dict(zip((int(x) for x in layers.split(",")), stores.split())), tokens,
                                   decode, context=opts["context"])

    result = cards.build_cards(report.read_table(forward), reader(stores_a, layers_a), reader(stores_b, layers_b),
                               bins=opts["card_bins"], per_bin=opts["cards_per_bin"], top_k=opts["top_k"],
                               seed=opts["seed"])
    store.write_json(out, {"cards": result})
    click.echo(f"{len(result)} cards: " + ", ".join(f"{c['mppc']:.3f}" for c in result))


if __name__ == "__main__":
    entry(main, globals())
