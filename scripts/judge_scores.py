"""The judge's scores of one (judge, prompt set, model, SAE seed): L{layer}.csv files + manifest."""
import json
import time

import click

from universality.core import store
from universality.core.cli import entry
from universality.report.judge import base, scores
from universality.report.judge import prompts as prompt_sets


@click.command()
@click.option("--contexts", required=True, type=click.Path(exists=True), help="judge_contexts output (.json)")
@click.option("--prompts", required=True, help="prompt set (universality/prompts), e.g. appE-v1")
@click.option("--options", required=True, help="JSON: the judge section (kind, model, base_url, api_key_env, ...)")
@click.option("--prompt-hash", required=True, help="the prompt set's hash, as the rule planned it")
@click.option("--cache", required=True, type=click.Path(dir_okay=False), help="answer cache (.jsonl), kept across runs")
@click.option("--threads", default=1, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory of L{layer}.csv")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False), help="output manifest (.json)")
def main(contexts, prompts, options, prompt_hash, cache, threads, out, manifest):
    opts = json.loads(options)
    digest = prompt_sets.prompt_hash(prompts)
    if digest != prompt_hash:
        raise click.BadParameter(f"prompt set {prompts} hashes to {digest}, the rule planned {prompt_hash}",
                                 param_hint="--prompt-hash")
    features = store.read_json(contexts)["features"]
    judge = base.make_judge(opts, threads=threads)
    slug = base.slug(base.judge_identity(opts))
    start = time.perf_counter()
    table = scores.score_features(judge, features, prompt_sets.load_prompts(prompts), scores.AnswerCache(cache),
                                  digest, slug)
    seconds = time.perf_counter() - start
    layers = sorted({f["layer"] for f in features})
    with store.atomic_output(out) as tmp:
        tmp.mkdir()
        for layer in layers:
            table[table["layer"] == layer].to_csv(tmp / f"L{layer}.csv", index=False)
    store.write_json(manifest, {"judge": slug, "identity": base.judge_identity(opts), "prompts": prompts,
                                "prompt_hash": digest, "features": len(table), "layers": layers,
                                "files": [f"L{layer}.csv" for layer in layers],
                                "unparseable": {s: int((~table[f"{s}_parsed"].astype(bool)).sum()) for s in prompt_sets.SCORES},
                                "seconds": round(seconds, 1)})
    click.echo(f"{len(table)} features scored in {seconds:.1f} s")


if __name__ == "__main__":
    entry(main, globals())
