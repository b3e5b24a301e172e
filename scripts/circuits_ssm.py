"""Path patching of one Mamba model: the paper's induction tables (SSM state at the final [A], c and
x restricted to the path into the state), the broader variants, and IOI (c per layer and position)."""
import json

import click
import torch
from tqdm import tqdm

from universality.circuits import induction, ioi, ssm_paths
from universality.circuits.effects import Effects
from universality.core import store
from universality.core.cli import entry
from universality.data import corpus


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--options", required=True, help="the config's circuits section as JSON")
@click.option("--tables", required=True, help="space-separated CSV paths, in ssm_paths.table_names order")
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
@click.option("--reference", default="", help='"mamba-130m": the paper\'s tables go beside ours in the report')
@click.option("--threads", default=1, type=int)
def main(model, model_dir, tokenizer, options, tables, summary, reference, threads):
    torch.set_num_threads(threads)
    opts = json.loads(options)
    names = ssm_paths.table_names(opts["broader_variants"])
    if len(tables.split()) != len(names):
        raise click.BadParameter(f"{len(tables.split())} paths for the tables {names}", param_hint="--tables")
    lm, vocab, bos, prompts = induction.setup(model_dir, tokenizer, opts)
    click.echo(f"device: {next(lm.parameters()).device}", err=True)
    effects = Effects(opts["bootstrap"], opts["ci_level"], opts["seed"])
    ioi_prompts = ioi.ioi_prompts(opts["prompts"], vocab, bos, opts["seed"], corpus.load_tokenizer(tokenizer))
    click.echo(f"IOI prompts: {'templated' if ioi_prompts['templated'] else 'random frame'} "
               f"({ioi_prompts['reason']}); e.g. {ioi_prompts['example']!r}", err=True)
    with tqdm(desc=f"path patching {model}", unit="pass", mininterval=5) as bar:
        ssm_paths.mamba_experiments(lm, prompts, opts["batch_size"], effects, opts["broader_variants"],
                                    progress=bar.update)
        ioi.ioi_experiment(lm, ioi_prompts, opts["batch_size"], effects, progress=bar.update)
    frames = effects.tables()
    # the IOI table says which prompts it holds (templated sentences or the random-frame fallback)
    frames["ioi"] = frames["ioi"].assign(templated=ioi_prompts["templated"], prompt_source=ioi_prompts["reason"])
    for name, path in zip(names, tables.split()):
        with store.atomic_output(path) as tmp:
            frames[name].to_csv(tmp, index=False, float_format="%.6g")
    info = {"model": model, "arch": lm.config.model_type, **ssm_paths.summarise_mamba(effects),
            "ioi": ioi.summarise_ioi(effects, ioi_prompts), "paper_reference": reference, "options": opts}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
