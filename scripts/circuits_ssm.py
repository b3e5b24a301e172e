"""Path patching of one Mamba model: induction prompts (SSM states, SSM inputs c, conv inputs x)
and IOI-style prompts (c per layer and position)."""
import json

import click
import torch
from tqdm import tqdm

from universality.circuits import induction as circuits
from universality.circuits import ioi
from universality.core import store
from universality.core.cli import entry


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--options", required=True, help="the config's circuits section as JSON")
@click.option("--state", required=True, type=click.Path(dir_okay=False), help="CSV: SSM state per layer")
@click.option("--ssm-in", required=True, type=click.Path(dir_okay=False), help="CSV: c per layer and position")
@click.option("--conv-in", required=True, type=click.Path(dir_okay=False), help="CSV: x at the key layer")
@click.option("--ioi-table", required=True, type=click.Path(dir_okay=False), help="CSV: IOI-style c patching")
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
def main(model, model_dir, tokenizer, options, state, ssm_in, conv_in, ioi_table, summary, threads):
    torch.set_num_threads(threads)
    opts = json.loads(options)
    lm, vocab, bos, prompts = circuits.setup(model_dir, tokenizer, opts)
    click.echo(f"device: {next(lm.parameters()).device}", err=True)
    with tqdm(desc=f"path patching {model}", unit="pass", mininterval=5) as bar:
        tables = circuits.mamba_experiments(lm, prompts, opts["batch_size"], progress=bar.update)
        ioi_prompts = ioi.ioi_prompts(opts["prompts"], vocab, bos, opts["seed"])
        tables["ioi"] = ioi.ioi_experiment(lm, ioi_prompts, opts["batch_size"], progress=bar.update)
    for name, path in (("state", state), ("ssm_in", ssm_in), ("conv_in", conv_in), ("ioi", ioi_table)):
        with store.atomic_output(path) as tmp:
            tables[name].to_csv(tmp, index=False, float_format="%.6g")
    info = {"model": model, "arch": lm.config.model_type, **circuits.summarise_mamba(tables),
            "ioi": ioi.summarise_ioi(tables["ioi"]), "options": opts}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
