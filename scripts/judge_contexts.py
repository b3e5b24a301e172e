"""The judge's sample: features of A stratified per MPPC bin, each with its top-activating samples."""
import json

import click

from universality.core import store
from universality.core.cli import entry
from universality.report import cards
from universality.report import page as report
from universality.report.judge import contexts


@click.command()
@click.option("--stores", required=True, help="space-separated feature stores of A, one per layer")
@click.option("--layers", required=True, help="comma-separated layers, in the order of --stores")
@click.option("--forward", required=True, type=click.Path(exists=True), help="MPPC table A->B whose bins stratify the sample")
@click.option("--tokens", required=True, type=click.Path(exists=True), help="the eval token set (tokens/eval.zarr)")
@click.option("--tokenizer", required=True, type=click.Path(exists=True), help="tokenizer.json")
@click.option("--options", required=True, help='JSON: {"bins", "per_bin", "samples", "seed", "context"}')
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output (.json)")
def main(stores, layers, forward, tokens, tokenizer, options, out):
    opts = json.loads(options)
    layer_ids = [int(x) for x in layers.split(",")]
    reader = cards.ContextReader(dict(zip(layer_ids, stores.split())), tokens, cards.token_decoder(tokenizer),
                                 context=opts["context"])
    chosen = contexts.choose_features(report.read_table(forward), opts["bins"], opts["per_bin"], opts["seed"])
    features = contexts.gather(reader, chosen, opts["samples"])
    store.write_json(out, {"options": opts, "stratify": forward, "features": features})
    click.echo(f"{len(features)} features: " + chosen.groupby("bin", sort=False).size().to_string())


if __name__ == "__main__":
    entry(main, globals())
