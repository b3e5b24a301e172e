"""The config's ``backend`` reaches the torch stages (universality.core.device), checked on the CPU.

Two kinds of checks per stage: passing the CPU device explicitly gives byte-identical outputs to
the default call (whose numbers the stage's own tests check against references), and passing
PyTorch's ``meta`` device (tensors without data) makes the stage fail exactly where it copies a
result back to the host: a stage that ignored the argument would run on the CPU and succeed,
one that moved only part of its tensors would fail earlier with a device-mismatch error.
No CUDA run here: the CUDA path is written for CUDA but not yet run on a GPU.
"""
import json

import numpy as np
import pytest
import torch
import zarr
from safetensors.numpy import load_file

from universality.data import activations
from universality.sae import features
from universality.models import registry as models
from universality.sae import stage as saes
from universality.core import store
from universality.core.device import BACKENDS, as_device, device_of, torch_device
from universality.sae.model import SAE
from universality.sae.config import SAETrainConfig
from universality.sae.evaluate import evaluate
from universality.sae.train import train_sae
from conftest import make_tokens as _make_tokens

VOCAB, MAX_LEN, D = 40, 20, 16
#: the error of copying a meta tensor to the host (``.cpu()``, ``.item()``, ``float()``)
META = r"meta tensor"


# ------------------------------------------------------------------------------- helper
def test_cpu_and_auto(monkeypatch):
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("auto") == torch.device("cpu")
    assert torch_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("auto") == torch.device("cuda")
    assert torch_device("cuda") == torch.device("cuda")
    assert torch_device("cpu") == torch.device("cpu")


def test_cuda_without_a_device_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"config key 'backend' is 'cuda' but torch sees no CUDA device"):
        torch_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "", "cuda:0"])
def test_unknown_backend_names_the_key(bad):
    with pytest.raises(ValueError, match=r"config key 'backend' must be one of \('auto', 'cpu', 'cuda'\)"):
        torch_device(bad)
    assert "cuda:0" not in BACKENDS


def test_as_device_and_device_of():
    assert as_device("cpu") == torch.device("cpu") and as_device(torch.device("meta")).type == "meta"
    assert device_of(torch.nn.Linear(2, 2).to("meta")).type == "meta"
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")


# ------------------------------------------------------------------------------ fixtures
def make_tokens(path, n_windows, seed):
    return _make_tokens(path, n_windows, seed, VOCAB, MAX_LEN)


SPECS = {
    "gpt_neox": {"arch": "gpt_neox", "d_model": D, "n_layers": 2, "n_heads": 2},
    "mamba": {"arch": "mamba", "d_model": D, "n_layers": 2, "d_state": 4, "expand": 2, "d_conv": 4},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two saved toy models, two token sets, a [600, D] activation store and an SAE trained on it."""
    root = tmp_path_factory.mktemp("device")
    for arch, spec in SPECS.items():
        torch.manual_seed(0)
        models.save_model(models.build_model(models.build_config(spec, VOCAB, MAX_LEN, 0)).eval(), root / arch)
    sae_set, eval_set = make_tokens(root / "a.zarr", 40, 1), make_tokens(root / "b.zarr", 30, 2)
    activations.collect(str(root / "gpt_neox"), {"sae": sae_set, "eval": eval_set}, "resid", [0], 400, 200,
                        str(root / "acts"), model_name="m", dtype="float32", batch_size=8, chunk_rows=128)
    train_sae(root / "acts" / "L0.zarr", root / "sae", TRAIN, progress=False)
    return root, sae_set, eval_set


# lr_decay 0: the trainer's default before SAETrainConfig took the schema's defaults
TRAIN = SAETrainConfig(expansion=4, l1=0.5, lr=3e-3, batch_size=32, train_tokens=32 * 20, buffer_tokens=128,
                       checkpoint_every=7, log_every=5, lr_decay=0.0)


def collect(root, sae_set, eval_set, arch, out, **kw):
    activations.collect(str(root / arch), {"sae": sae_set, "eval": eval_set}, "resid", [0, 1], 50, 30,
                        str(out), model_name="m", dtype="float32", batch_size=4, chunk_rows=16, **kw)
    return [np.asarray(store.open_array(out / f"L{l}.zarr")[:]) for l in (0, 1)]


# -------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("arch", ["gpt_neox", "mamba"])
def test_activations_on_the_cpu_device_are_unchanged(world, tmp_path, arch):
    root, sae_set, eval_set = world
    default = collect(root, sae_set, eval_set, arch, tmp_path / "default")
    explicit = collect(root, sae_set, eval_set, arch, tmp_path / "cpu", device=torch_device("cpu"))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(default, explicit))
    with pytest.raises(Exception, match=META):
        collect(root, sae_set, eval_set, arch, tmp_path / "meta", device="meta")
    assert not (tmp_path / "meta").exists()  # atomic: a failed collection leaves nothing


def test_train_sae_on_the_cpu_device_is_unchanged(world, tmp_path):
    root, _, _ = world
    acts = root / "acts" / "L0.zarr"
    m = train_sae(acts, tmp_path / "cpu", TRAIN, device=torch_device("cpu"), progress=False)
    a, b = load_file(str(root / "sae" / "sae_weights.safetensors")), load_file(str(tmp_path / "cpu" / "sae_weights.safetensors"))
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    before = json.loads((root / "sae" / "metrics.json").read_text())
    for key in ("explained_variance", "mse", "mean_l0", "n_dead", "mean_sparsity"):
        assert m[key] == before[key]
    assert m["training"]["device"] == "cpu"
    with pytest.raises(Exception, match=META):
        train_sae(acts, tmp_path / "meta", TRAIN, device="meta", progress=False)
    assert not (tmp_path / "meta").exists()


def test_checkpoints_hold_cpu_tensors_and_no_device(world, tmp_path):
    """A checkpoint does not depend on the device that wrote it, so a run resumes anywhere."""
    root, _, _ = world

    class Stop(Exception):
        pass

    def stop(step):
        if step == 14:
            raise Stop

    with pytest.raises(Stop):
        train_sae(root / "acts" / "L0.zarr", tmp_path / "s", TRAIN, device="cpu", on_step=stop, progress=False)
    ckpt = sorted((tmp_path / "s.ckpt").glob("step_*"))[-1]
    assert "device" not in json.dumps(json.loads((ckpt / "state.json").read_text())["config"])
    train_sae(root / "acts" / "L0.zarr", tmp_path / "s", TRAIN, device=torch.device("cpu"), progress=False)
    a, b = load_file(str(root / "sae" / "sae_weights.safetensors")), load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_evaluate_runs_where_the_sae_is(world):
    root, _, _ = world
    sae, arr = SAE.load(root / "sae"), store.open_array(root / "acts" / "L0.zarr")
    assert evaluate(sae, arr, (400, 600)) == evaluate(SAE.load(root / "sae", device="cpu"), arr, (400, 600))
    with pytest.raises(Exception, match=META):
        evaluate(SAE.load(root / "sae", device="meta"), arr, (400, 600))


def test_ce_losses_follow_the_model_device(world):
    root, _, eval_set = world
    sae = SAE.load(root / "sae")
    lm = models.load_model(root / "gpt_neox")
    got = saes.ce_losses(lm, eval_set, 0, lambda x: sae(x)[0], 4)
    assert got == saes.ce_losses(lm.to(torch_device("cpu")), eval_set, 0, lambda x: sae(x)[0], 4)
    assert got["spliced"] != got["clean"] != got["zero_ablated"]  # the patches took effect
    meta_sae = SAE.load(root / "sae", device="meta")
    with pytest.raises(Exception, match=META):
        saes.ce_losses(lm.to("meta"), eval_set, 0, lambda x: meta_sae(x)[0], 4)


def test_features_on_the_cpu_device_are_unchanged(world, tmp_path):
    root, _, _ = world
    acts = str(root / "acts" / "L0.zarr")
    a = features.encode(str(root / "sae"), acts, str(tmp_path / "a.zarr"), chunk_rows=64)
    b = features.encode(str(root / "sae"), acts, str(tmp_path / "b.zarr"), chunk_rows=64, device=torch_device("cpu"))
    assert a == b and a["nnz"] > 0
    ga, gb = zarr.open_group(str(tmp_path / "a.zarr"), mode="r"), zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    for k in ("indptr", "indices", "data", "counts"):
        assert np.asarray(ga[k][:]).tobytes() == np.asarray(gb[k][:]).tobytes()
    with pytest.raises(Exception, match=META):
        features.encode(str(root / "sae"), acts, str(tmp_path / "m.zarr"), chunk_rows=64, device="meta")
    assert not (tmp_path / "m.zarr").exists()
