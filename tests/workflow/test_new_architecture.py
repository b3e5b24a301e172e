"""The extension point: a fourth architecture registered in a few lines gets the whole DAG.

The adapter below is all a new architecture needs (here GPT-NeoX's pieces under a new name);
the workflow is then planned in this process through Snakemake's API, so the rules see the
registry as the test left it.
"""
from __future__ import annotations

import pytest
import yaml

from universality.models import registry
from universality.models.gpt_neox import GPTNeoX


class ToyArchitecture(GPTNeoX):
    name = "toy_lm"
    circuits = None  # no circuit experiment: the circuit rules must leave it out


@pytest.fixture
def toy_architecture():
    registry.register(ToyArchitecture())
    yield
    del registry.ARCHITECTURES["toy_lm"]


def planned_jobs(repo, configfile, workdir) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job the workflow plans for ``configfile`` (nothing runs).

    Snakemake's API plans the DAG only to print or run it; the job list is read from the
    workflow object it builds (the steps of ``DAGApi.printdag``, without the printing)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                config_settings=ConfigSettings(configfiles=[configfile]),
                                snakefile=repo / "Snakefile", workdir=workdir)
        workflow.dag(DAGSettings())
        wf = workflow._workflow
        wf._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
        wf._build_dag()
        return [(job.rule.name, dict(job.wildcards_dict)) for job in wf.dag.jobs]


def test_a_registered_architecture_is_planned_through_every_stage(repo, tmp_path, toy_architecture):
    config = yaml.safe_load((repo / "presets" / "micro.yaml").read_text())
    config["models"]["toy-s0"] = {"arch": "toy_lm", "seed": 2, "d_model": 32, "n_layers": 2, "n_heads": 2,
                                  "train_tokens": 16384}
    config["comparisons"]["cross_toy"] = {"kind": "sae", "a": "neox-s0", "b": "toy-s0"}
    config["comparisons"]["neuron_toy"] = {"kind": "neuron", "a": "neox-s0", "b": "toy-s0"}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))

    jobs = planned_jobs(repo, configfile, tmp_path)
    toy = [(rule, w) for rule, w in jobs if w.get("model") == "toy-s0" or w.get("comparison", "").endswith("_toy")]
    rules = sorted({rule for rule, _ in toy})
    assert rules == ["activations", "cka", "depth", "features", "matching", "mppc", "pearson_pair", "report_cards",
                     "svcca_rsa", "train_model", "train_sae"], rules
    count = {r: sum(1 for rule, _ in toy if rule == r) for r in rules}
    # two sites; one SAE per layer; 2 x 2 layer pairs for each of the two new comparisons; the
    # measures beside MPPC: depth and matching of both, CKA and SVCCA / RSA of the SAE one; the SAE
    # one is a cross-architecture pair, so it gets its cards (issue 14: every cross pair)
    assert count == {"activations": 2, "features": 2, "mppc": 2, "pearson_pair": 8, "train_model": 1,
                     "train_sae": 2, "depth": 2, "matching": 2, "cka": 1, "svcca_rsa": 1, "report_cards": 1}, count
    # the circuit rules take architectures by capability: nothing for an architecture without one
    assert not any(rule.startswith("circuits_") and w.get("model") == "toy-s0" for rule, w in jobs)
    assert any(rule == "circuits_ssm" for rule, _ in jobs)


def test_an_unregistered_architecture_is_refused_naming_the_key(repo, tmp_path):
    from universality.workflow.config import ConfigError, validate

    config = yaml.safe_load((repo / "presets" / "micro.yaml").read_text())
    config["models"]["toy-s0"] = {"arch": "toy_lm", "d_model": 32, "n_layers": 2, "train_tokens": 1}
    with pytest.raises(ConfigError, match=r"models\.toy-s0\.arch: 'toy_lm' is not one of"):
        validate(config)
