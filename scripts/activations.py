"""Collect one model's activations at one site, every configured layer, into Zarr stores."""
import json

import click

from universality.core.cli import entry
import torch

from universality.data import activations
from universality.core import store
from universality.core.device import BACKENDS, torch_device


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--site", required=True, type=click.Choice(["resid", "neuron"]))
@click.option("--layers", required=True, help="comma-separated layer indices")
@click.option("--sae-set", required=True, type=click.Path(exists=True), help="token set of the sae segment")
@click.option("--eval-set", required=True, type=click.Path(exists=True), help="token set of the eval segment")
@click.option("--options", required=True, help="the config's activations section as JSON")
@click.option("--out", required=True, type=click.Path())
@click.option("--manifest", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
@click.option("--backend", default="auto", type=click.Choice(BACKENDS), help="torch device: auto|cpu|cuda")
def main(model, model_dir, site, layers, sae_set, eval_set, options, out, manifest, threads, backend):
    torch.set_num_threads(threads)
    opts = json.loads(options)
    info = activations.collect(
        model_dir, {"sae": sae_set, "eval": eval_set}, site, [int(x) for x in layers.split(",")],
        opts["sae_tokens"], opts["eval_tokens"], out, model_name=model, dtype=opts["dtype"],
        batch_size=opts["batch_size"], chunk_rows=opts["chunk_rows"], device=torch_device(backend),
    )
    store.write_json(manifest, info)
    click.echo(f"{model}/{site}: {len(info['layers'])} layers written to {out}")


if __name__ == "__main__":
    entry(main, globals())
