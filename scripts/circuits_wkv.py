"""WKV-state path patching of one RWKV model: the state read at the final [A] per layer (+ every
position), and k / v into the state per layer and position (universality.circuits.wkv_paths)."""
import json

import click
import torch
from tqdm import tqdm

from universality.circuits import induction, wkv_paths
from universality.circuits.effects import Effects
from universality.core import store
from universality.core.cli import entry


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--options", required=True, help="the config's circuits section as JSON")
@click.option("--tables", required=True, help="space-separated CSV paths, in wkv_paths.table_names order")
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
def main(model, model_dir, tokenizer, options, tables, summary, threads):
    torch.set_num_threads(threads)
    opts = json.loads(options)
    names = wkv_paths.table_names(opts["broader_variants"])
    if len(tables.split()) != len(names):
        raise click.BadParameter(f"{len(tables.split())} paths for the tables {names}", param_hint="--tables")
    lm, _, _, prompts = induction.setup(model_dir, tokenizer, opts)
    click.echo(f"device: {next(lm.parameters()).device}", err=True)
    effects = Effects(opts["bootstrap"], opts["ci_level"], opts["seed"])
    with tqdm(desc=f"WKV path patching {model}", unit="pass", mininterval=5) as bar:
        wkv_paths.rwkv_experiments(lm, prompts, opts["batch_size"], effects, opts["broader_variants"],
                                   progress=bar.update)
    frames = effects.tables()
    for name, path in zip(names, tables.split()):
        with store.atomic_output(path) as tmp:
            frames[name].to_csv(tmp, index=False, float_format="%.6g")
    info = {"model": model, "arch": lm.config.model_type, **wkv_paths.summarise_rwkv(effects), "options": opts}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
