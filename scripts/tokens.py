"""Tokenise one split into a token set (Zarr): BOS-prefixed windows of at most max_len tokens
(documents split into windows, or truncated to one)."""
import json

import click

from universality.core.cli import entry

from universality.data import corpus
from universality.core import store


@click.command()
@click.option("--documents", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--split", required=True, type=click.Choice(["train", "eval"]))
@click.option("--max-len", required=True, type=int)
@click.option("--doc-mode", default="split", type=click.Choice(["split", "truncate"]),
              help="split documents into consecutive windows, or truncate each to one window")
@click.option("--out", required=True, type=click.Path())
@click.option("--manifest", required=True, type=click.Path(dir_okay=False))
def main(documents, tokenizer, split, max_len, doc_mode, out, manifest):
    attrs = corpus.tokenize_split(documents, tokenizer, split, max_len, out, mode=doc_mode)
    store.write_json(manifest, attrs)
    click.echo(json.dumps(attrs, indent=2))


if __name__ == "__main__":
    entry(main, globals())
