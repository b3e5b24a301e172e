"""Model folders sealed and verified on load, unsealed stores refused, pair files bound to their
inputs, every token budget checked by the tokens rule (issue 20, the remaining cases)."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from universality.compare import mppc
from universality.core import integrity, store
from universality.core.integrity import StoreError
from universality.models import registry
from universality.sae.features import CSRStore
from universality.workflow.config import token_budget
from tests.reliability.test_values import base


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A sealed toy GPT-NeoX folder as train_model writes it (save_model seals)."""
    spec = {"arch": "gpt_neox", "d_model": 16, "n_layers": 1, "n_heads": 2, "train_tokens": 0}
    torch.manual_seed(0)
    model = registry.build_model(registry.build_config(spec, 64, 16, 0))
    out = tmp_path_factory.mktemp("model") / "m"
    with store.atomic_output(out, sealed=True) as tmp:
        registry.save_model(model, tmp)
        (tmp / "tokenizer.json").write_text("{}")  # added after save_model: sealed again at the end
    return out


@pytest.fixture
def model_copy(model_dir, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def test_model_folder_is_sealed_and_loads(model_copy):
    rec = integrity.read_record(model_copy)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(rec["files"])
    registry.load_model(model_copy)


def test_every_architecture_checks_its_folder(model_copy):
    """Each adapter's ``load`` (built-in and any later one) goes through the folder check."""
    for arch in registry.ARCHITECTURES.values():
        assert hasattr(type(arch).load, "__wrapped__"), arch.name
    (model_copy / "integrity.json").unlink()
    with pytest.raises(StoreError, match="no integrity record"):
        registry.get("gpt_neox").load(model_copy)  # the adapter directly, not only load_model


def test_random_bytes_in_model_weights_are_an_error(model_copy):
    f = model_copy / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[-64:-48] = os.urandom(16)  # the data region: the header still parses
    f.write_bytes(bytes(b))
    with pytest.raises(StoreError, match=re.escape(str(model_copy)) + r".*'model\.safetensors'.*sha256"):
        registry.load_model(model_copy)


def test_truncated_model_weights_are_an_error(model_copy):
    f = model_copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(StoreError, match=r"'model\.safetensors' has \d+ bytes, its record says"):
        registry.load_model(model_copy)


def test_changed_model_config_is_an_error(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["layer_norm_eps"] = 0.1
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StoreError, match="config.json"):
        registry.load_model(model_copy)


@pytest.mark.parametrize("damage,message", [("header", "header too large"), ("truncate", "incomplete metadata")])
def test_safetensors_decoder_errors_name_the_file(model_copy, damage, message):
    """A folder the pipeline did not write (external: no record to check first)."""
    (model_copy / "integrity.json").unlink()
    f = model_copy / "model.safetensors"
    f.write_bytes(b"\xff" * 64 if damage == "header" else f.read_bytes()[:-100])
    with pytest.raises(StoreError, match=re.escape(str(f)) + f".*cannot be decoded.*{message}"):
        registry.load_model(model_copy, external=True)


def test_large_file_is_checked_by_sampled_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "BLOCK_BYTES", 1 << 20)
    d = tmp_path / "big"
    d.mkdir()
    (d / "w.bin").write_bytes(np.random.default_rng(0).bytes(3 * (1 << 20) + 5))
    rec = integrity.seal(d)
    assert len(rec["blocks"]["w.bin"]) == 4 and rec["block_bytes"] == 1 << 20
    integrity.verify(d, full_bytes=0, sample=16)
    f = d / "w.bin"
    b = bytearray(f.read_bytes())
    b[2 * (1 << 20) + 7] ^= 1
    f.write_bytes(bytes(b))
    with pytest.raises(StoreError, match=r"'w\.bin' block 2 \(from byte 2097152\)"):
        integrity.verify(d, full_bytes=0, sample=16)
    with pytest.raises(StoreError, match=r"'w\.bin' does not match"):
        integrity.verify(d)  # small enough: the whole file is hashed


def test_unsealed_store_is_refused_naming_it(work):
    (work / "L0.zarr" / "integrity.json").unlink()
    with pytest.raises(StoreError, match=re.escape(str(work / "L0.zarr")) + r": has no integrity record.*rerun"):
        store.open_array(work / "L0.zarr")
    (work / "f.zarr" / "integrity.json").unlink()
    with pytest.raises(StoreError, match="no integrity record"):
        CSRStore(str(work / "f.zarr"))
    assert store.open_array(work / "L0.zarr", external=True).shape == (2000, 16)


def test_seal_command_for_a_hand_made_store(work):
    (work / "L0.zarr" / "integrity.json").unlink()
    assert integrity.main(["seal", str(work / "L0.zarr")]) == 0
    assert integrity.main(["verify", str(work / "L0.zarr")]) == 0
    store.open_array(work / "L0.zarr")


# ---- pair files ---------------------------------------------------------------------------------
@pytest.fixture
def pairs(work, tmp_path):
    """Pair files A{0,1}_B0: the pristine feature store and one of other activations against the
    pristine store (layers 0 and 1 of A)."""
    from universality.sae import features
    from tests.reliability.conftest import write_acts
    arr = store.open_array(work / "L0.zarr")
    write_acts(work / "L1.zarr", np.asarray(arr[:], np.float32)[::-1].copy(), attrs=dict(arr.attrs))
    features.encode(str(work / "sae"), str(work / "L1.zarr"), str(work / "f1.zarr"), chunk_rows=300)
    out = tmp_path / "pearson"
    for la, path in ((0, "f.zarr"), (1, "f1.zarr")):
        mppc.pair(str(work / path), str(work / "f.zarr"), "sae", 0, str(out / f"A{la}_B0.npz"),
                  meta={"la": la, "lb": 0})
    stores = ({"0": str(work / "f.zarr"), "1": str(work / "f1.zarr")}, {"0": str(work / "f.zarr")})
    return out, stores


def test_pairs_load_and_reduce(pairs):
    out, (a, b) = pairs
    got = mppc.load_pairs([str(out / "A0_B0.npz"), str(out / "A1_B0.npz")], "sae", 0, a, b)
    fwd, rev = mppc.reduce(got)
    assert len(fwd) == 2 * 64 and len(rev) == 64


def test_missing_layer_pair_is_named(pairs):
    out, (a, b) = pairs
    with pytest.raises(ValueError, match=r"1 layer pair\(s\) missing.*A1_B0\.npz"):
        mppc.load_pairs([str(out / "A0_B0.npz")], "sae", 0, a, b)
    r = mppc.load_pairs([str(out / "A0_B0.npz")], "sae", 0, {"0": a["0"]}, b)
    r[(1, 1)] = r[(0, 0)]  # an incomplete grid handed to reduce directly: not KeyError (0, 1)
    with pytest.raises(ValueError, match=r"missing.*A0_B1\.npz"):
        mppc.reduce(r)


def test_misnamed_pair_file_is_refused(pairs):
    out, (a, b) = pairs
    shutil.copy(out / "A0_B0.npz", out / "copy")
    os.replace(out / "copy", out / "A1_B0.npz")
    with pytest.raises(StoreError, match=r"A1_B0\.npz: holds layer pair A0_B0, not the one its name says"):
        mppc.load_pairs([str(out / "A0_B0.npz"), str(out / "A1_B0.npz")], "sae", 0, a, b)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeros"])
def test_damaged_pair_file_names_the_file(pairs, damage):
    out, (a, b) = pairs
    f = out / "A1_B0.npz"
    data = f.read_bytes()
    f.write_bytes({"garbage": os.urandom(len(data)), "truncated": data[: len(data) // 2],
                   "zeros": b"\0" * len(data)}[damage])
    with pytest.raises(StoreError, match=re.escape(str(f)) + ".*cannot be decoded"):
        mppc.load_pairs([str(out / "A0_B0.npz"), str(f)], "sae", 0, a, b)


def test_pair_file_of_other_inputs_is_refused(pairs, work, tmp_path):
    """The stores were rebuilt (or the file comes from another comparison): refused, named."""
    out, (a, b) = pairs
    files = [str(out / "A0_B0.npz"), str(out / "A1_B0.npz")]
    with pytest.raises(StoreError, match=r"A1_B0\.npz: computed from other inputs than this comparison's A store"):
        mppc.load_pairs(files, "sae", 0, {"0": a["0"], "1": a["0"]}, b)  # 'layer 1' is another store now
    with pytest.raises(StoreError, match=r"computed as kind 'sae', shift 0; this comparison is kind 'sae', shift 500"):
        mppc.load_pairs(files, "sae", 500, a, b)
    with pytest.raises(StoreError, match="not a layer of this comparison"):
        mppc.load_pairs(files, "sae", 0, {"0": a["0"]}, b)


def test_pair_file_without_identity_is_refused(pairs):
    """A pair file of an older version (or of another tool): no input identity to check."""
    out, (a, b) = pairs
    from universality.compare import pearson
    r = pearson.load_result(out / "A1_B0.npz")
    pearson.save_result(out / "A1_B0.npz", {k: v for k, v in r.items() if k not in ("a_id", "b_id")})
    with pytest.raises(StoreError, match=r"A1_B0\.npz: not a pair file of this pipeline \(no a_id, b_id\)"):
        mppc.load_pairs([str(out / "A0_B0.npz"), str(out / "A1_B0.npz")], "sae", 0, a, b)


# ---- budgets ------------------------------------------------------------------------------------
def test_every_eval_budget_is_checked_by_the_token_budget_rule():
    cfg = base()
    cfg["training"]["eval_tokens"] = 5000
    name = next(iter(cfg["models"]))
    cfg["models"][name]["training"] = {"eval_tokens": 7000}
    budget = token_budget(cfg, "eval")
    assert budget["training.eval_tokens"] == 5000
    assert budget[f"models.{name}.training.eval_tokens"] == 7000
    from universality.data import corpus
    with pytest.raises(ValueError, match=rf"'eval' has only 4096 scored tokens.*training\.eval_tokens = 5000.*"
                                         rf"models\.{re.escape(name)}\.training\.eval_tokens = 7000"):
        corpus.check_budget({"split": "eval", "scored_tokens": 4096, "documents": 3}, budget)


def test_token_budget_rule_names_the_key_and_records_no_budget(tmp_path):
    """The token_budget rule's script: fails naming the key and writes nothing; its record holds
    the token counts, not the budget values (a changed budget that still fits: the same bytes)."""
    import importlib.util
    from click.testing import CliRunner
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("token_budget", Path(__file__).parents[2] / "scripts" / "token_budget.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for split, n in (("train", 5000), ("eval", 3000)):
        (tmp_path / f"{split}.json").write_text(json.dumps({"split": split, "scored_tokens": n, "documents": 4}))
    args = ["--train-manifest", str(tmp_path / "train.json"), "--eval-manifest", str(tmp_path / "eval.json")]
    outs = []
    for i, eval_budget in enumerate((2048, 3000)):
        out = tmp_path / f"budget{i}.json"
        budget = {"train": {"activations.sae_tokens": 4096}, "eval": {"training.eval_tokens": eval_budget}}
        res = CliRunner().invoke(script.main, args + ["--budget", json.dumps(budget), "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    budget = {"train": {}, "eval": {"training.eval_tokens": 3001}}
    res = CliRunner().invoke(script.main, args + ["--budget", json.dumps(budget), "--out", str(tmp_path / "x.json")])
    assert res.exit_code != 0 and "training.eval_tokens = 3001" in str(res.exception)
    assert not (tmp_path / "x.json").exists()
