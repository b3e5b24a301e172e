"""Train one SAE on one layer's activations, then measure CE-loss recovered by splicing it in."""
import json

import click
import torch

from universality.core.cli import entry
from universality.core.paths import layer_store
from universality.sae import stage as saes
from universality.core.device import BACKENDS, torch_device


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--site", required=True, type=click.Choice(["resid", "neuron"]))
@click.option("--layer", required=True, type=int)
@click.option("--seed", required=True, type=int, help="SAE seed (init and data order)")
@click.option("--init-seed", default=None, type=int, help="initialisation seed alone (default --seed)")
@click.option("--data-seed", default=None, type=int, help="data-order seed alone (default --seed)")
@click.option("--label", default=None, help="the run's name (default model/site/L{layer}/seed{seed})")
@click.option("--acts-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--eval-set", required=True, type=click.Path(exists=True))
@click.option("--options", required=True, help="the SAE options of this (model, layer) as JSON")
@click.option("--out", required=True, type=click.Path())
@click.option("--threads", default=1, type=int)
@click.option("--backend", default="auto", type=click.Choice(BACKENDS), help="torch device: auto|cpu|cuda")
def main(model, site, layer, seed, init_seed, data_seed, label, acts_dir, model_dir, eval_set, options, out,
         threads, backend):
    torch.set_num_threads(threads)
    metrics = saes.train_and_evaluate(
        model, site, layer, seed, layer_store(acts_dir, layer), model_dir, eval_set,
        json.loads(options), out, threads, device=torch_device(backend),
        init_seed=init_seed, data_seed=data_seed, label=label,
    )
    click.echo(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    entry(main, globals())
