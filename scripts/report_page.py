"""The report page (report/index.html): tables from summary.json, figures by relative path, cards."""
import base64
import json
import os
from pathlib import Path

import click

from universality.core.cli import entry
from universality.core.paths import ResultPaths
from universality.report import page as report
from universality.core import store


@click.command()
@click.option("--summary", required=True, type=click.Path(exists=True), help="summary.json (report_figures)")
@click.option("--figures", required=True, help="space-separated PNGs, in the order of plan.figures")
@click.option("--captions", required=True, help="space-separated caption files (.rst), same order")
@click.option("--cards", default="", help="space-separated cards JSON, in the order of plan.cards")
@click.option("--circuits", default="", help="circuits/summary.json (circuits_summary), if any")
@click.option("--sae", default="", help="report/sae.json (report_sae): SAE quality and the sweep")
@click.option("--sae-figure", default="", help="the sweep figure (report_sae), if any")
@click.option("--measures", default="", help="report/measures.json (report_measures), if any")
@click.option("--measure-figures", default="", help="space-separated PNGs of report_measures (similarity_maps, matching_shares)")
@click.option("--judge", default="", help="report/judge/summary.json (report_judge), if any")
@click.option("--judge-figures", default="", help="space-separated judge PNGs (Fig. 5a, Fig. 5b)")
@click.option("--setup", required=True, help='JSON: {"plan", "report", "results"} (the rule\'s params)')
@click.option("--page", required=True, type=click.Path(dir_okay=False), help="output: index.html")
def main(summary, figures, captions, cards, circuits, sae, sae_figure, measures, measure_figures, judge, judge_figures,
         setup, page):
    s = json.loads(setup)
    plan = s["plan"]
    pngs, texts = figures.split(), captions.split()
    if len(pngs) != len(plan["figures"]) or len(texts) != len(pngs):
        raise click.BadParameter(f"{len(pngs)} figures / {len(texts)} captions for {plan['figures']}",
                                 param_hint="--figures")
    here = Path(page).resolve().parent
    figs = [{"name": name, "title": report.FIGURE_TITLES[name], "caption": Path(c).read_text().strip(),
             "src": Path(os.path.relpath(Path(p).resolve(), here)).as_posix()}
            for name, p, c in zip(plan["figures"], pngs, texts)]
    card_sets = {name: store.read_json(p)["cards"] for name, p in zip(plan["cards"], cards.split())}
    circ = None
    if circuits:
        c = store.read_json(circuits)
        rel = lambda p: Path(os.path.relpath(Path(p).resolve(), here)).as_posix()
        # Inlined (data URIs): a copied report folder keeps them, though they live in circuits/.
        inline = lambda p: "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
        circ = {"findings": c["findings"], "comparison": c.get("comparison", []),
                "figures": [{"src": inline(f["path"]), "caption": f["caption"]} for f in c["figures"]],
                "tables": [{**t, "src": rel(ResultPaths(s["results"])(t["src"]))}
                           for t in report.circuit_tables(c, s["results"])]}
    sae_section = None
    if sae:
        sae_section = store.read_json(sae)
        if sae_figure:
            sae_section["figure"] = Path(os.path.relpath(Path(sae_figure).resolve(), here)).as_posix()
    meas = None
    if measures:
        from universality.report.measures import MEASURE_FIGURES

        meas = {**store.read_json(measures), "figures": [
            {"name": n, "title": MEASURE_FIGURES[n], "src": Path(os.path.relpath(Path(p).resolve(), here)).as_posix()}
            for n, p in zip(MEASURE_FIGURES, measure_figures.split())]}
    text = report.render_page(store.read_json(summary), plan, figs, card_sets,
                              {"results": s["results"], "report": s["report"]}, circ, sae=sae_section, measures=meas,
                              judge=judge_section(judge, judge_figures, here))
    with store.atomic_output(page) as tmp:
        tmp.write_text(text, encoding="utf-8")
    click.echo(f"wrote {page}: {len(figs)} figures, {sum(map(len, card_sets.values()))} cards")


def judge_section(summary_path: str, pngs: str, here: Path):
    """The judge's summary with its figures (relative paths, captions from report/captions)."""
    if not summary_path:
        return None
    captions = Path(__file__).resolve().parents[1] / "report" / "captions"
    figs = [{"name": Path(p).stem, "src": Path(os.path.relpath(Path(p).resolve(), here)).as_posix(),
             "caption": (captions / f"{Path(p).stem}.rst").read_text().strip()} for p in pngs.split()]
    return {**store.read_json(summary_path), "figures": figs}


if __name__ == "__main__":
    entry(main, globals())
