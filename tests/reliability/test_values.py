"""Each bad value -> rejected at load naming the key; budgets and splits of a small corpus."""
import copy
import json
import math

import pytest
import yaml

from universality.data import corpus
from universality.workflow.config import ConfigError, validate


def base():
    return yaml.safe_load(open(__import__("pathlib").Path(__file__).parents[2] / "presets" / "micro.yaml"))


def setk(cfg, key, value):
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return cfg


NAN, INF = float("nan"), float("inf")
BAD = [  # (key, value, what the message must say)
    ("saes.lr", NAN, r"saes\.lr: nan is not a finite number"),
    ("saes.lr", INF, r"saes\.lr: inf is not a finite number"),
    ("saes.l1", NAN, r"saes\.l1: nan"),
    ("saes.l1", INF, r"saes\.l1: inf"),
    ("saes.lr_decay", NAN, r"saes\.lr_decay: nan"),
    ("training.lr", NAN, r"training\.lr: nan"),
    ("training.lr", INF, r"training\.lr: inf"),
    ("training.weight_decay", NAN, r"training\.weight_decay: nan"),
    ("models.neox-s0.rotary_pct", NAN, r"models\.neox-s0\.rotary_pct: nan"),
    ("corpus.eval_fraction", NAN, r"corpus\.eval_fraction: nan"),
    ("report.card_bins", [0.0, NAN, 1.0], r"report\.card_bins\[1\]: nan"),
    ("saes.overrides", {"neox-s0": {"0": {"l1": NAN}}}, r"saes\.overrides\.neox-s0\.0\.l1: nan"),
    ("saes.overrides", {"neox-s0": {"0": {"lr": -1.0}}}, r"saes\.overrides\.neox-s0\.0\.lr: -1\.0"),
    ("saes.overrides", {"neox-s0": {"0": {"batch_size": 0}}}, r"saes\.overrides\.neox-s0\.0\.batch_size"),
    ("saes.overrides", {"neox-s0": {"1": {"batch_size": 10 ** 6}}},
     r"saes\.overrides\.neox-s0\.1\.batch_size: 1000000 is more than the 4096"),
    ("saes.seeds", [-1], r"saes\.seeds\.0: -1 is less than the minimum"),
    ("models.neox-s0.seed", -3, r"models\.neox-s0\.seed: -3"),
    ("corpus.seed", -1, r"corpus\.seed"),
    ("comparisons.cross_arch.seed_b", -1, r"comparisons\.cross_arch\.seed_b"),
    ("saes.batch_size", 5000, r"saes\.batch_size: 5000 is more than the 4096 stored resid rows"),
    ("comparisons.cross_arch_null.shift", 2048, r"comparisons\.cross_arch_null\.shift: 2048 is 0 tokens from 0"),
    ("comparisons.cross_arch_null.shift", 4097, r"comparisons\.cross_arch_null\.shift: 4097 is 1 tokens"),
    ("models.neox-s0.layers", [0, 0], r"models\.neox-s0\.layers: layer\(s\) \[0\] listed twice"),
    ("models.NEOX-s0", {"arch": "gpt_neox", "d_model": 32, "n_layers": 2, "n_heads": 2, "train_tokens": 99},
     r"models\.NEOX-s0: differs from models\.neox-s0 only in case"),
    ("results", "", r"results"),
    ("results", "universality/out", r"results: 'universality/out' resolves to .* inside the source folder"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v!r}"[:60] for k, v, _ in BAD])
def test_bad_value_is_rejected_naming_the_key(key, value, message, monkeypatch, repo):
    monkeypatch.chdir(repo)  # `results` is resolved against the working directory
    cfg = setk(base(), key, copy.deepcopy(value))
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_yaml_nan_and_inf_spellings(repo, monkeypatch):
    monkeypatch.chdir(repo)
    for text, word in ((".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")):
        cfg = base()
        cfg["saes"]["lr"] = yaml.safe_load(f"x: {text}")["x"]
        with pytest.raises(ConfigError, match=rf"saes\.lr: {word} is not a finite number"):
            validate(cfg)


def test_results_under_the_repo_root_but_not_a_source_folder_pass(repo, monkeypatch, tmp_path):
    monkeypatch.chdir(repo)
    for results in ("results", "results-micro", str(tmp_path / "r")):
        validate(setk(base(), "results", results))
    with pytest.raises(ConfigError, match="is the repository itself"):
        validate(setk(base(), "results", "."))


def test_small_corpus_gets_two_nonempty_splits(tmp_path):
    """27 files at a tiny eval_fraction hash to no eval document (chance 27e-9 per seed, whatever the
    temporary path): one is moved, deterministically."""
    for i in range(27):
        (tmp_path / f"f{i}.txt").write_text(f"document {i} " * 20)
    for seed in range(6):
        c = {"source": "glob", "path": str(tmp_path / "*.txt"), "text_field": "text", "hf_split": "train",
             "max_documents": None, "eval_fraction": 1e-9, "seed": seed}
        out = tmp_path / f"docs{seed}.jsonl"
        info = corpus.write_documents(c, str(out), str(tmp_path / f"m{seed}.json"))
        assert info["documents"]["eval"] >= 1 and info["documents"]["train"] >= 1
        assert "split_fallback" in info
        again = corpus.write_documents(c, str(tmp_path / "again.jsonl"), str(tmp_path / "again.json"))
        assert again["sha256"] == info["sha256"]


def test_token_budget_names_numbers_and_keys(tmp_path):
    attrs = {"split": "eval", "scored_tokens": 19066, "documents": 6}
    with pytest.raises(ValueError, match=r"'eval' has only 19066 scored tokens.*activations\.eval_tokens = 65536"
                                         r".*lower activations\.eval_tokens to at most 19066"):
        corpus.check_budget(attrs, {"activations.eval_tokens": 65536})
    corpus.check_budget(attrs, {"activations.eval_tokens": 19066})
