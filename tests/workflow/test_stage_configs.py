"""The stage dataclasses are the single source of defaults: schemas/config.schema.yaml must agree.

Each check compares both ways (every schema key is a dataclass field with the same default and
type, and every field the schema should expose is a schema key), so it fails if either side
changes alone.
"""
from __future__ import annotations

import dataclasses

import pytest

from universality.sae.config import SAETrainConfig
from universality.workflow.config import (SAE_OVERRIDABLE, STAGE_CONFIGS, ConfigError, load_schema,
                                          sae_config, sae_options, stage_config, validate)

#: Keys of `saes` that choose what to train, not how (handled by the workflow, not the trainer).
SAE_SELECTION = {"sites", "seeds", "extra_seeds", "overrides"}


def base():
    return {"models": {"neox": {"arch": "gpt_neox", "d_model": 16, "n_layers": 2, "n_heads": 2,
                                "train_tokens": 100}}}


def as_json(value):
    """Tuples as lists, as YAML spells sequences."""
    return [as_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def assert_defaults_agree(props: dict, cls, names) -> None:
    defaults = cls()
    for name in names:
        assert "default" in props[name], f"{cls.__name__}.{name}: the schema has no default"
        want, got = props[name]["default"], as_json(getattr(defaults, name))
        assert got == want and type(got) is type(want), \
            f"{cls.__name__}.{name}: dataclass default {got!r}, schema default {want!r}"


def test_saes_schema_keys_and_defaults_equal_the_trainer_config():
    props = load_schema()["properties"]["saes"]["properties"]
    assert set(props) - SAE_SELECTION == set(SAETrainConfig.schema_keys())
    assert_defaults_agree(props, SAETrainConfig, SAETrainConfig.schema_keys())
    trainer_only = {f.name for f in dataclasses.fields(SAETrainConfig)} - set(SAETrainConfig.schema_keys())
    assert trainer_only and not trainer_only & set(props)


@pytest.mark.parametrize("section", sorted(STAGE_CONFIGS))
def test_section_schema_keys_and_defaults_equal_the_stage_config(section):
    cls = STAGE_CONFIGS[section]
    props = load_schema()["properties"][section]["properties"]
    names = [f.name for f in dataclasses.fields(cls)]
    assert set(props) == set(names)
    assert_defaults_agree(props, cls, names)


def test_every_defaulted_section_has_a_stage_config():
    schema = load_schema()["properties"]
    sections = {k for k, v in schema.items() if v.get("type") == "object" and "default" in v}
    assert sections == set(STAGE_CONFIGS) | {"saes", "comparisons"}  # comparisons: a map of entries


def test_model_training_overrides_have_the_training_keys():
    models = load_schema()["properties"]["models"]["additionalProperties"]["properties"]
    fields = {f.name for f in dataclasses.fields(STAGE_CONFIGS["training"])}
    assert set(models["training"]["properties"]) == fields


def test_stage_config_builds_the_defaults():
    cfg = validate(base())
    for section, cls in STAGE_CONFIGS.items():
        assert stage_config(cfg, section) == cls()
    assert sae_config(cfg, "neox", 1) == SAETrainConfig()


def test_overridable_keys_come_from_the_trainer_config():
    assert SAE_OVERRIDABLE == SAETrainConfig.overridable()
    assert set(SAE_OVERRIDABLE) <= set(SAETrainConfig.schema_keys())
    assert "train_tokens" in SAE_OVERRIDABLE and "checkpoint_every" not in SAE_OVERRIDABLE
    cfg = base()
    cfg["saes"] = {"overrides": {"neox": {"1": {"l1": 3.0, "train_tokens": 512}}}}
    got = sae_config(validate(cfg), "neox", 1)
    assert got == SAETrainConfig(l1=3.0, train_tokens=512)
    assert sae_config(validate(cfg), "neox", 0) == SAETrainConfig()
    cfg["saes"]["overrides"]["neox"]["1"] = {"checkpoint_every": 5}
    with pytest.raises(ConfigError, match=r"saes\.overrides\.neox\.1: unknown keys \['checkpoint_every'\]"):
        validate(cfg)


def test_from_options_rejects_unknown_keys_and_bad_normalization():
    assert SAETrainConfig.from_options({"l1": 1.5}) == SAETrainConfig().replace(l1=1.5)
    with pytest.raises(ValueError, match=r"unknown SAE training options \['sites'\]"):
        SAETrainConfig.from_options({"sites": ["resid"]})
    with pytest.raises(ValueError, match="normalize must be one of"):
        SAETrainConfig(normalize="layer")


def test_sae_options_keys_are_the_schema_keys():
    assert set(sae_options(validate(base()), "neox", 0)) == set(SAETrainConfig.schema_keys())
