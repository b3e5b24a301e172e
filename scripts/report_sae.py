"""The report's SAE section (report/sae.json): quality of every SAE, the sweep's MPPC per variant
and its figure."""
import json
from pathlib import Path

import click

from universality.core.cli import entry
from universality.core import store
from universality.report import page as report
from universality.report import sae as sae_report


@click.command()
@click.option("--saes", required=True, help="space-separated SAE directories, in the order of setup.saes")
@click.option("--variants", default="", help="space-separated sweep-variant SAE directories (setup.sweep order)")
@click.option("--forward", default="", help="space-separated sweep MPPC tables (base -> variant), entry order")
@click.option("--backward", default="", help="space-separated reverse tables, entry order")
@click.option("--setup", required=True, help='JSON: {"saes": [[model, layer, seed], ...], "sweep", "entries", "entry_order", "variant_order"}')
@click.option("--summary", required=True, type=click.Path(dir_okay=False), help="output: report/sae.json")
@click.option("--figure", default=None, type=click.Path(dir_okay=False), help="output: the sweep figure")
def main(saes, variants, forward, backward, setup, summary, figure):
    s = json.loads(setup)
    dirs = saes.split()
    if len(dirs) != len(s["saes"]):
        raise click.BadParameter(f"{len(dirs)} SAE directories for {len(s['saes'])} SAEs", param_hint="--saes")
    quality = [sae_report.quality_row(Path(d) / "metrics.json", model=m, layer=l, seed=seed)
               for d, (m, l, seed) in zip(dirs, s["saes"])]
    sweep, rows = s["sweep"], []
    if s["entries"]:
        # the input files are in entry_order / variant_order (a JSON param's dict keys are sorted)
        vq = {v: sae_report.quality_row(Path(d) / "metrics.json", variant=v)
              for v, d in zip(s["variant_order"], variants.split(), strict=True)}
        tables = {e: (report.read_table(f), report.read_table(b))
                  for e, f, b in zip(s["entry_order"], forward.split(), backward.split(), strict=True)}
        entries = {e: s["entries"][e] for e in s["entry_order"]}
        rows = sae_report.sweep_rows(sweep, entries, tables, vq)
    info = sae_report.summarize_sae(quality, sweep if s["entries"] else None, rows)
    store.write_json(summary, info)
    if figure:
        sae_report.sweep_figure(info, figure)
    click.echo(json.dumps(info, indent=2)[:4000])


if __name__ == "__main__":
    entry(main, globals())
