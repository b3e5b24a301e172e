"""Check every token budget of the config against both token sets, before any model is trained."""
import json

import click

from universality.core import store
from universality.core.cli import entry
from universality.data import corpus


@click.command()
@click.option("--train-manifest", required=True, type=click.Path(exists=True, dir_okay=False), help="tokens/train.json")
@click.option("--eval-manifest", required=True, type=click.Path(exists=True, dir_okay=False), help="tokens/eval.json")
@click.option("--budget", required=True, help='JSON {split: {config key: scored tokens needed}}')
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(train_manifest, eval_manifest, budget, out):
    budget = json.loads(budget)
    have = {}
    for split, manifest in (("train", train_manifest), ("eval", eval_manifest)):
        attrs = store.read_json(manifest)
        corpus.check_budget(attrs, budget.get(split, {}))  # ValueError: the numbers and the keys
        have[split] = {"scored_tokens": int(attrs["scored_tokens"]), "documents": int(attrs["documents"])}
    store.write_json(out, have)  # the counts, not the budget values
    click.echo(json.dumps({"budget": budget, "have": have}, indent=2))


if __name__ == "__main__":
    entry(main, globals())
