"""Result paths against the file contracts of docs/architecture.md."""
import re
from pathlib import Path

from universality.core.paths import ResultPaths, layer_store

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def contract_paths():
    """Every backquoted path of the "File contracts" table, trailing slashes dropped."""
    text = ARCHITECTURE.read_text().split("## File contracts", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in text.splitlines() if line.startswith("| ") and "`" in line]
    return {p.rstrip("/") for row in rows for p in re.findall(r"`([^`]+)`", row)}


def test_paths_are_the_documented_contracts():
    p = ResultPaths("")
    built = {
        p.documents(), p.tokenizer(), p.tokens("{split}"), p.model("{model}"),
        p.activation_layer("{model}", "{site}", "{layer}"), p.sae("{model}", "{site}", "{layer}", "{seed}"),
        p.features("{model}", "{site}", "{layer}", "{seed}"), p.pearson("{comparison}", "{la}", "{lb}"),
        p.circuit_table("{model}", "{experiment}"),
        p.mppc("{comparison}").replace(".csv.gz", ".parquet"),  # documented as .parquet (or .csv.gz)
    }
    assert built <= contract_paths(), built - contract_paths()
    assert p.mppc("{comparison}") == "mppc/{comparison}.csv.gz"


def test_paths_are_under_the_root_and_format_wildcard_values():
    p = ResultPaths("results-micro")
    assert p.sae("neox-s0", "resid", 3, 1) == "results-micro/saes/neox-s0/resid/L3/seed1"
    assert p.features("mamba-s0", "resid", 0, 2) == "results-micro/features/mamba-s0/resid/L0/seed2.zarr"
    assert p.features_manifest("mamba-s0", "resid", 0, 2) == "results-micro/features/mamba-s0/resid/L0/seed2.json"
    assert p.activation_layer("m", "neuron", 5) == layer_store(p.activations("m", "neuron"), 5) \
        == "results-micro/activations/m/neuron/L5.zarr"
    assert p.activations_manifest("m", "resid") == "results-micro/activations/m/resid.json"
    assert p.model_metrics("m") == "results-micro/models/m.json"
    assert (p.mppc_reverse("x"), p.mppc_summary("x")) == ("results-micro/mppc/x.reverse.csv.gz",
                                                          "results-micro/mppc/x.json")
    assert p.complexity("m", 0) == "results-micro/report/complexity/m/seed0.csv.gz"
    assert p.circuits_summary() == "results-micro/circuits/summary.json"


def test_logs_mirror_their_rule_and_wildcards():
    p = ResultPaths("results")
    assert p.log("documents") == "results/logs/documents.log"
    assert p.log("tokens", "{split}") == "results/logs/tokens/{split}.log"
    assert p.sae_log("train_sae", "{model}", "{site}", "{layer}", "{seed}") == \
        "results/logs/train_sae/{model}/{site}/L{layer}/seed{seed}.log"
    assert p.pearson_log("c", 1, 2) == "results/logs/pearson/c/A1_B2.log"
    assert p.complexity_log("m", 0) == "results/logs/report/complexity/m/seed0.log"
