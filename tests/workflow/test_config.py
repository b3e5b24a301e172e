import json

import pytest
import yaml

from universality.workflow.config import ConfigError, model_layers, validate


def base():
    return {
        "models": {
            "neox": {"arch": "gpt_neox", "d_model": 16, "n_layers": 2, "n_heads": 2, "train_tokens": 100},
            "mamba": {"arch": "mamba", "d_model": 16, "n_layers": 4, "train_tokens": 100},
        }
    }


def test_defaults_filled():
    cfg = validate(base())
    assert cfg["corpus"]["source"] == "stdlib"
    assert cfg["tokenizer"]["max_len"] == 256
    assert cfg["models"]["neox"]["seed"] == 0 and cfg["models"]["neox"]["source"] == "train"
    assert model_layers(cfg, "mamba") == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["config.yaml", "presets/micro.yaml", "presets/study.yaml"])
def test_shipped_configs_validate(repo, name):
    validate(yaml.safe_load((repo / name).read_text()))


def test_unknown_architecture_names_key():
    cfg = base()
    cfg["models"]["mamba"]["arch"] = "transformer"
    with pytest.raises(ConfigError, match=r"models\.mamba\.arch: 'transformer' is not one of"):
        validate(cfg)


def test_unknown_key_is_reported():
    cfg = base()
    cfg["trainig"] = {}
    with pytest.raises(ConfigError, match="trainig"):
        validate(cfg)


def test_layer_out_of_range_names_key():
    cfg = base()
    cfg["models"]["neox"]["layers"] = [0, 2]
    with pytest.raises(ConfigError, match=r"models\.neox\.layers: layer 2 out of range \[0, 2\)"):
        validate(cfg)


def test_missing_model_field_names_key():
    cfg = base()
    del cfg["models"]["neox"]["n_heads"]
    with pytest.raises(ConfigError, match=r"models\.neox\.n_heads"):
        validate(cfg)


def test_heads_must_divide_width():
    cfg = base()
    cfg["models"]["neox"]["n_heads"] = 3
    with pytest.raises(ConfigError, match=r"models\.neox\.n_heads"):
        validate(cfg)


def test_missing_corpus_file_names_path(tmp_path):
    cfg = base()
    cfg["corpus"] = {"source": "jsonl", "path": str(tmp_path / "nope.jsonl")}
    with pytest.raises(ConfigError, match=r"corpus\.path: JSONL file not found: .*nope\.jsonl"):
        validate(cfg)


def test_glob_matching_nothing(tmp_path):
    cfg = base()
    cfg["corpus"] = {"source": "glob", "path": str(tmp_path / "*.txt")}
    with pytest.raises(ConfigError, match=r"corpus\.path: the glob .* matches no file"):
        validate(cfg)


def test_number_written_as_string_is_rejected():
    cfg = base()
    cfg["training"] = {"lr": "1e-3"}  # what PyYAML makes of `lr: 1e-3`
    with pytest.raises(ConfigError, match=r"training\.lr: '1e-3' is not of type 'number'"):
        validate(cfg)


def test_as_param_is_order_independent():
    from universality.workflow.config import as_param

    assert as_param({"b": 1, "a": [1, 2]}) == as_param(json.loads('{"a": [1, 2], "b": 1}'))


def test_model_training_overrides_apply_to_that_model_only():
    from universality.workflow.config import model_training

    raw = base()
    raw["training"] = {"lr": 1e-3}
    raw["models"]["mamba"]["training"] = {"induction_warmup_steps": 900, "induction_warmup_len": 32}
    cfg = validate(raw)
    mamba, neox = model_training(cfg, "mamba"), model_training(cfg, "neox")
    assert mamba["induction_warmup_steps"] == 900 and mamba["induction_warmup_len"] == 32
    assert mamba["lr"] == 1e-3  # the global value where the model has none
    assert neox == cfg["training"] and neox["induction_warmup_len"] is None
    raw["models"]["mamba"]["training"] = {"lr_typo": 1}
    with pytest.raises(ConfigError, match="lr_typo"):
        validate(raw)
