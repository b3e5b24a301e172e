"""The SAE-invariance sweep's configuration (issue 19): checks naming the key, each variant's run."""
from __future__ import annotations

import copy

import pytest

from universality.workflow.config import ConfigError, sae_options, validate
from universality.workflow.sweep import SWEEP_NULL, sweep_entries, sweep_run


def base(**sweep):
    cfg = {"models": {"neox": {"arch": "gpt_neox", "d_model": 16, "n_layers": 2, "n_heads": 2,
                               "train_tokens": 100}},
           "saes": {"l1": 3.0, "overrides": {"neox": {"1": {"lr": 1e-3}}}}}
    if sweep:
        cfg["sae_sweep"] = sweep
    return cfg


SWEEP = dict(model="neox", layer=1, base_seed=0, null_shift=7,
             variants={"init": {"init_seed": 1}, "data": {"data_seed": 2}, "bs": {"batch_size": 64},
                       "plain": {"l1_penalty": "plain", "init_seed": 3}})


def test_no_sweep_by_default():
    cfg = validate(base())
    assert cfg["sae_sweep"]["model"] is None and sweep_entries(cfg) == {}


def test_variant_runs_are_the_base_recipe_with_one_change():
    cfg = validate(base(**SWEEP))
    recipe = sae_options(cfg, "neox", 1)
    assert recipe["l1"] == 3.0 and recipe["lr"] == 1e-3  # the base SAE's own overrides apply
    init = sweep_run(cfg, "init")
    assert init == {"options": recipe, "seed": 0, "init_seed": 1, "data_seed": 0}
    assert sweep_run(cfg, "data") == {"options": recipe, "seed": 0, "init_seed": 0, "data_seed": 2}
    assert sweep_run(cfg, "bs")["options"] == {**recipe, "batch_size": 64}
    plain = sweep_run(cfg, "plain")
    assert plain["options"] == {**recipe, "l1_penalty": "plain"} and plain["init_seed"] == 3
    entries = sweep_entries(cfg)
    assert list(entries) == ["init", "data", "bs", "plain", SWEEP_NULL]
    assert entries[SWEEP_NULL] == {"variant": "bs", "shift": 7}  # the first by name, whatever the order
    assert all(e["shift"] == 0 for k, e in entries.items() if k != SWEEP_NULL)
    no_null = validate(base(**{**SWEEP, "null_shift": 0}))
    assert SWEEP_NULL not in sweep_entries(no_null)


@pytest.mark.parametrize("change, key", [
    ({"model": "mamba"}, "sae_sweep.model"),
    ({"layer": 5}, "sae_sweep.layer"),
    ({"base_seed": 4}, "sae_sweep.base_seed"),
    ({"variants": {}}, "sae_sweep.variants"),
    ({"variants": {"x": {"expansion_": 2}}}, "sae_sweep.variants.x"),
    ({"variants": {"x": {"l1_penalty": "l2"}}}, "sae_sweep.variants.x"),
    ({"variants": {SWEEP_NULL: {"init_seed": 1}}}, f"sae_sweep.variants.{SWEEP_NULL}"),
    ({"variants": {"x": {}}}, "sae_sweep.variants.x"),
])
def test_bad_sweeps_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(base(**{**SWEEP, **change}))


def test_variants_without_a_model_are_an_error():
    with pytest.raises(ConfigError, match=r"sae_sweep\.model"):
        validate(base(variants={"init": {"init_seed": 1}}))


def test_recipe_switches_validate_and_reach_the_trainer():
    cfg = base()
    cfg["saes"].update(l1_penalty="plain", normalize="none", l1_warmup=0.0, grad_clip=None)
    opts = sae_options(validate(cfg), "neox", 0)
    assert (opts["l1_penalty"], opts["normalize"], opts["l1_warmup"], opts["grad_clip"]) == ("plain", "none", 0.0, None)
    for key, bad in (("l1_penalty", "l2"), ("normalize", "whiten"), ("l1_warmup", 2.0), ("grad_clip", 0)):
        wrong = copy.deepcopy(base())
        wrong["saes"][key] = bad
        with pytest.raises(ConfigError, match=f"saes.{key}"):
            validate(wrong)
    doc = base()
    doc["tokenizer"] = {"documents": "chop"}
    with pytest.raises(ConfigError, match="tokenizer.documents"):
        validate(doc)
