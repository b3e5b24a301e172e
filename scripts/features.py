"""Encode the shared eval tokens with one SAE into sparse CSR feature activations (Zarr)."""
import json

import click

from universality.core.cli import entry
from universality.core.paths import layer_store
from universality.sae import features
from universality.core import store
from universality.core.device import BACKENDS, torch_device


@click.command()
@click.option("--model", required=True)
@click.option("--site", required=True, type=click.Choice(["resid", "neuron"]))
@click.option("--layer", required=True, type=int)
@click.option("--seed", required=True, type=int)
@click.option("--sae", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--acts-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--chunk-rows", default=8192, type=int)
@click.option("--out", required=True, type=click.Path())
@click.option("--manifest", required=True, type=click.Path(dir_okay=False))
@click.option("--backend", default="auto", type=click.Choice(BACKENDS), help="torch device: auto|cpu|cuda")
def main(model, site, layer, seed, sae, acts_dir, chunk_rows, out, manifest, backend):
    info = features.encode(sae, layer_store(acts_dir, layer), out, chunk_rows=chunk_rows,
                           device=torch_device(backend),
                           attrs={"model": model, "site": site, "layer": layer, "seed": seed})
    store.write_json(manifest, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
