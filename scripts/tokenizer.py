"""Train the shared byte-level BPE of the toy zoo, or export a hub model's own tokenizer."""
import json
from pathlib import Path

import click

from universality.core.cli import entry

from universality.data import corpus
from universality.zoo import hub


@click.command()
@click.option("--tokenizer", required=True, help="the config's tokenizer section as JSON")
@click.option("--documents", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(tokenizer, documents, out):
    cfg = json.loads(tokenizer)
    if cfg["type"] == "hub":
        # A local folder, else the cached hub repository at its pinned revision (offline).
        source = cfg["hub_model"]
        if not Path(source).is_dir():
            source = str(hub.snapshot(source, cfg.get("revision") or "main")[0])
        corpus.hub_tokenizer(source, out)
    else:
        corpus.train_tokenizer(documents, cfg["vocab_size"], out)
    click.echo(f"tokenizer written to {out}")


if __name__ == "__main__":
    entry(main, globals())
