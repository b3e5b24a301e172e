"""Attention heads of one model: previous-token / induction scores, head patching, and path
patching from every earlier head into the induction heads' query / key / value."""
import json

import click
import torch
from tqdm import tqdm

from universality.circuits import heads, induction
from universality.circuits.effects import Effects
from universality.core import store
from universality.core.cli import entry


@click.command()
@click.option("--model", required=True, help="the model's key in config['models']")
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--options", required=True, help="the config's circuits section as JSON")
@click.option("--scores", required=True, type=click.Path(dir_okay=False), help="CSV: attention scores per head")
@click.option("--patching", required=True, type=click.Path(dir_okay=False), help="CSV: head patching")
@click.option("--head-paths", required=True, type=click.Path(dir_okay=False),
              help="CSV: sender head -> receiver q/k/v path patching")
@click.option("--summary", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=1, type=int)
def main(model, model_dir, tokenizer, options, scores, patching, head_paths, summary, threads):
    torch.set_num_threads(threads)
    opts = json.loads(options)
    lm, vocab, bos, prompts = induction.setup(model_dir, tokenizer, opts)
    click.echo(f"device: {next(lm.parameters()).device}", err=True)
    rows = heads.repeated_tokens(opts["prompts"], opts["score_length"], vocab, bos, opts["seed"])
    score_table = heads.head_scores(lm, rows, opts["score_length"])
    receivers = heads.receivers_of(score_table, opts["path_receivers"])
    effects = Effects(opts["bootstrap"], opts["ci_level"], opts["seed"])
    with tqdm(desc=f"head patching {model}", unit="pass", mininterval=5) as bar:
        heads.head_patching(lm, prompts, opts["batch_size"], effects, progress=bar.update)
        heads.head_path_patching(lm, prompts, receivers, opts["batch_size"], effects, progress=bar.update)
    frames = effects.tables()
    if "head_paths" not in frames:     # no receiver (path_receivers 0, or a one-layer model)
        frames["head_paths"] = heads.empty_paths()
    for table, path in ((score_table, scores), (frames["head_patching"], patching), (frames["head_paths"], head_paths)):
        with store.atomic_output(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    info = {"model": model, "arch": lm.config.model_type, **heads.summarise_neox(score_table, effects),
            "receivers": [f"L{l}H{h}" for l, h in receivers], "options": opts}
    store.write_json(summary, info)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    entry(main, globals())
