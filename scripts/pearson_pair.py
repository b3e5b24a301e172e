"""Pearson sums of one layer pair of a comparison, reduced to row/column max and argmax."""
import json

import click

from universality.core.cli import entry
from universality.compare import mppc


@click.command()
@click.option("--comparison", required=True)
@click.option("--la", required=True, type=int)
@click.option("--lb", required=True, type=int)
@click.option("--a-store", required=True, type=click.Path(exists=True))
@click.option("--b-store", required=True, type=click.Path(exists=True))
@click.option("--options", required=True, help="kind, shift, backend, chunk_rows, top_k as JSON")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(comparison, la, lb, a_store, b_store, options, out):
    opts = json.loads(options)
    result = mppc.pair(a_store, b_store, opts["kind"], opts["shift"], out, chunk_rows=opts["chunk_rows"],
                       backend=opts["backend"], meta={"la": la, "lb": lb},
                       top_k=opts.get("top_k", 0))
    click.echo(f"{comparison} A{la} B{lb}: {result['n_tokens']} tokens, "
               f"excluded {result['excluded_a']} (A) / {result['excluded_b']} (B)")


if __name__ == "__main__":
    entry(main, globals())
