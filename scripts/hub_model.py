"""Materialise one hub model from the local Hugging Face cache, then evaluate it like the toy zoo."""
import json

import click
import torch

from universality.core.cli import entry

from universality.data import corpus
from universality.zoo import hub
from universality.models import registry as models
from universality.core import store
from universality.zoo import train as zoo


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--spec", required=True, help="the model's config entry as JSON (source: hub)")
@click.option("--eval-tokens", required=True, type=click.Path(exists=True))
@click.option("--max-eval-tokens", required=True, type=int, help="scored tokens for the eval loss")
@click.option("--out", required=True, type=click.Path())
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
def main(model, spec, eval_tokens, max_eval_tokens, out, metrics, threads):
    torch.set_num_threads(threads)
    result = hub.materialise(model, json.loads(spec), out)
    eval_set = corpus.TokenSet(eval_tokens)
    max_len, vocab = int(eval_set.attrs["max_len"]), int(eval_set.attrs["vocab_size"])
    # Evaluate what the pipeline will read: the re-saved folder through the pipeline's loader.
    result.update(zoo.evaluate(models.load_model(out), eval_set, max_len, vocab, max_eval_tokens))
    store.write_json(metrics, result)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=2))


if __name__ == "__main__":
    entry(main, globals())
