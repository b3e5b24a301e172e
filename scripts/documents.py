"""Collect the corpus into documents.jsonl with a train/eval split by document."""
import json

import click

from universality.core.cli import entry

from universality.data import corpus as corpus_mod


@click.command()
@click.option("--corpus", required=True, help="the config's corpus section as JSON")
@click.option("--documents", required=True, type=click.Path(dir_okay=False))
@click.option("--manifest", required=True, type=click.Path(dir_okay=False))
def main(corpus, documents, manifest):
    info = corpus_mod.write_documents(json.loads(corpus), documents, manifest)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
