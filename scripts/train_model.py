"""Train one toy model of the zoo and save it with save_pretrained, plus its metrics."""
import json

import click

from universality.core.cli import entry
import torch

from universality.data import corpus
from universality.core import store
from universality.zoo import train as zoo
from universality.models.registry import save_model


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--spec", required=True, help="the model's config entry as JSON")
@click.option("--training", required=True, help="the config's training section as JSON")
@click.option("--train-tokens", required=True, type=click.Path(exists=True))
@click.option("--eval-tokens", required=True, type=click.Path(exists=True))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path())
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
def main(model, spec, training, train_tokens, eval_tokens, tokenizer, out, metrics, threads):
    torch.set_num_threads(threads)
    spec, training = json.loads(spec), json.loads(training)
    train_set, eval_set = corpus.TokenSet(train_tokens), corpus.TokenSet(eval_tokens)
    max_len, vocab = int(train_set.attrs["max_len"]), int(train_set.attrs["vocab_size"])
    trained, history = zoo.train(spec, training, train_set, max_len, vocab)
    result = zoo.evaluate(trained, eval_set, max_len, vocab, training["eval_tokens"])
    result.update(model=model, spec=spec, training=training, history=history,
                  parameters=sum(p.numel() for p in trained.parameters()))
    # sealed after the tokenizer is added: the record covers every file of the folder
    with store.atomic_output(out, sealed=True) as tmp:
        save_model(trained, tmp)
        zoo.save_tokenizer(tokenizer, tmp)
    store.write_json(metrics, result)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    entry(main, globals())
