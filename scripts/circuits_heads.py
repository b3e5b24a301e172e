"""Previous-token and induction heads of one GPT-NeoX model: attention scores and head patching."""
import json

import click
import torch
from tqdm import tqdm

from universality.circuits import induction as circuits
from universality.core import store
from universality.core.cli import entry


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--options", required=True, help="the config's circuits section as JSON")
@click.option("--scores", required=True, type=click.Path(dir_okay=False), help="CSV: attention scores per head")
@click.option("--patching", required=True, type=click.Path(dir_okay=False), help="CSV: head patching")
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
def main(model, model_dir, tokenizer, options, scores, patching, summary, threads):
    torch.set_num_threads(threads)
    opts = json.loads(options)
    lm, vocab, bos, prompts = circuits.setup(model_dir, tokenizer, opts)
    click.echo(f"device: {next(lm.parameters()).device}", err=True)
    rows = circuits.repeated_tokens(opts["prompts"], opts["score_length"], vocab, bos, opts["seed"])
    score_table = circuits.head_scores(lm, rows, opts["score_length"])
    with tqdm(desc=f"head patching {model}", unit="pass", mininterval=5) as bar:
        patch_table = circuits.head_patching(lm, prompts, opts["batch_size"], progress=bar.update)
    for table, path in ((score_table, scores), (patch_table, patching)):
        with store.atomic_output(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    info = {"model": model, "arch": lm.config.model_type, **circuits.summarise_neox(score_table, patch_table),
            "options": opts}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
