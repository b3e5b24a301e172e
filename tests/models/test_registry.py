"""The architecture registry: bitwise equality of the one GPT-NeoX forward with transformers,
the RWKV hook sites, and a fourth architecture added through the registry alone."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, RwkvForCausalLM

from universality.circuits.patching import Patch, final_logits, path_patch
from universality.core.hooks import run_with_cache
from universality.models import registry as models
from universality.models.gpt_neox import GPTNeoX, NeoXLM
from universality.zoo import train as zoo

from tests.fakes import FakeTokens

VOCAB = 64


def toy_spec(d_model, **kw):
    return {"arch": "gpt_neox", "d_model": d_model, "n_layers": 2, "n_heads": 2, "rotary_pct": 1.0, **kw}


def Tokens(n_windows, length, seed):
    """Random windows of ``length`` tokens over the toy vocabulary, BOS = 0 first."""
    return FakeTokens(n_windows, length, VOCAB, seed=seed)


def x_ids(batch=3, pos=40, seed=0):
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d_model", [32, 128])
def test_neox_forward_and_backward_are_bitwise_those_of_transformers(d_model):
    config = models.build_config(toy_spec(d_model), VOCAB, 64, 0)
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(config).train()
    torch.manual_seed(0)
    ours = models.build_model(config)
    assert isinstance(ours, NeoXLM) and ours.training
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in hf.named_parameters()]
    for (n, a), (_, b) in zip(ours.named_parameters(), hf.named_parameters()):
        assert torch.equal(a, b), n                        # the same initialisation
    x = x_ids()
    ref, got = hf(x).logits, ours(x)
    assert torch.equal(got, ref)
    F.cross_entropy(ref[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    F.cross_entropy(got[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for (n, a), (_, b) in zip(ours.named_parameters(), hf.named_parameters()):
        assert torch.equal(a.grad, b.grad), n


def test_explicit_attention_path_agrees_with_the_sdpa_path():
    torch.manual_seed(1)
    model = models.build_model(models.build_config(toy_spec(32), VOCAB, 64, 0)).eval()
    x = x_ids()
    with torch.no_grad():
        fast = model(x)
        logits, cache = run_with_cache(model, x, ["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(logits, fast, rtol=1e-5, atol=1e-5)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 2, 40, 40)


def test_five_training_steps_give_the_same_weights_with_either_forward(monkeypatch):
    spec = {**toy_spec(32), "seed": 3, "train_tokens": 4 * 32 * 5}
    training = {"batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.1, "induction_rows": 4,
                "induction_len": 32, "induction_warmup_steps": 0}
    tokens = Tokens(20, 32, seed=0)
    ours, h1 = zoo.train(spec, training, tokens, 32, VOCAB)
    monkeypatch.setattr(GPTNeoX, "build", lambda self, config: GPTNeoXForCausalLM(config).train())
    ref, h2 = zoo.train(spec, training, tokens, 32, VOCAB)
    assert isinstance(ours, NeoXLM) and isinstance(ref, GPTNeoXForCausalLM)
    assert len(h1) == len(h2) and h1[-1]["step"] == 4
    assert [r["loss_text"] for r in h1] == [r["loss_text"] for r in h2]
    for (n, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n


def test_neox_save_is_transformers_layout(tmp_path):
    torch.manual_seed(2)
    model = models.build_model(models.build_config(toy_spec(32), VOCAB, 64, 0)).eval()
    models.save_model(model, tmp_path)
    hf = GPTNeoXForCausalLM.from_pretrained(str(tmp_path)).eval()
    again = models.load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(hf(x_ids()).logits, model(x_ids()))
        assert torch.equal(again(x_ids()), model(x_ids()))


def rwkv_model():
    torch.manual_seed(4)
    spec = {"arch": "rwkv", "d_model": 16, "n_layers": 2}
    return models.build_model(models.build_config(spec, VOCAB, 64, 0))


def test_rwkv_sites_and_save_through_the_registry(tmp_path):
    """RwkvLM through the generic functions (tests/models/test_rwkv.py compares it with
    transformers op by op): neuron site width, capture, residual patch, save -> load."""
    model = rwkv_model().eval()
    x = x_ids(2, 12)
    with torch.no_grad():
        clean = model(x)
        with models.capture(model, [("resid", 0), ("neuron", 1)]) as cache:
            model(x)
        assert cache[("neuron", 1)].shape[-1] == models.site_width(model, "neuron") == 64
        assert cache[("resid", 0)].shape[-1] == models.site_width(model, "resid") == 16
        with models.patch_resid(model, 1, torch.zeros_like):
            zeroed = model(x)
        assert not torch.equal(zeroed, clean)
    models.save_model(model, tmp_path)
    assert "inner" not in json.dumps(list(RwkvForCausalLM.from_pretrained(str(tmp_path)).state_dict()))
    with torch.no_grad():
        assert torch.equal(models.load_model(tmp_path)(x), clean)


# ------------------------------------------------------------------ a fourth architecture
class ToyConfig(GPTNeoXConfig):
    model_type = "toy_neox"


class ToyNeoX(GPTNeoX):
    """GPT-NeoX pieces under a new name, with a sequential residual and the MLP input as neuron."""

    name = "toy_neox"
    required_fields = ("d_model", "n_layers", "n_heads")
    circuits = None
    neuron_hooks = ("blocks.{l}.mlp.hook_pre",)

    def build_config(self, spec, vocab_size, max_len, bos_id):
        base = super().build_config(spec, vocab_size, max_len, bos_id).to_dict()
        base.pop("model_type")
        return ToyConfig(**{**base, "use_parallel_residual": False})

    def build(self, config):
        torch_model = NeoXLM(config)
        return torch_model.train()

    def load(self, path):
        from safetensors.torch import load_file

        model = NeoXLM(ToyConfig.from_pretrained(str(path)))
        model.load_hf_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()

    def save(self, model, out_dir):
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(out_dir))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))


@pytest.fixture
def toy_arch():
    models.register(ToyNeoX())
    yield models.get("toy_neox")
    del models.ARCHITECTURES["toy_neox"]


def test_a_fourth_architecture_through_the_registry_alone(toy_arch, tmp_path):
    spec = {"arch": "toy_neox", "seed": 1, "d_model": 16, "n_layers": 2, "n_heads": 2, "train_tokens": 4 * 32 * 4}
    training = {"batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0, "induction_rows": 2,
                "induction_len": 16, "induction_warmup_steps": 0}
    model, history = zoo.train(spec, training, Tokens(10, 32, seed=1), 32, VOCAB)
    assert models.arch_of(model) is toy_arch and len(history) >= 1
    models.save_model(model, tmp_path / "m")
    loaded = models.load_model(tmp_path / "m")
    x = x_ids(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        with models.capture(loaded, [("resid", 1), ("neuron", 0)]) as cache:
            loaded(x)
    assert cache[("neuron", 0)].shape == (2, 16, models.site_width(loaded, "neuron"))
    last = "blocks.1.hook_resid_post"
    clean, c = final_logits(loaded, x, [last])
    torch.testing.assert_close(c[last], cache[("resid", 1)])
    other, oc = final_logits(loaded, x_ids(2, 16, seed=9), [last])
    torch.testing.assert_close(path_patch(loaded, x, [Patch(last, oc[last])]), other)
    with torch.no_grad(), models.patch_resid(loaded, 1, torch.zeros_like):
        zero = loaded(x)[:, -1]
    assert not torch.equal(zero, clean)


def test_workflow_config_accepts_any_registered_architecture(toy_arch):
    from universality.workflow.config import ConfigError, circuit_models, validate

    base = {"models": {"t": {"arch": "toy_neox", "d_model": 16, "n_layers": 2, "n_heads": 2}}}
    cfg = validate(base)
    assert circuit_models(cfg) == {"ssm": [], "heads": [], "wkv": []}
    bad = copy.deepcopy(base)
    bad["models"]["t"]["arch"] = "toy_neox_nope"
    with pytest.raises(ConfigError, match=r"models\.t\.arch: 'toy_neox_nope' is not one of .*toy_neox"):
        validate(bad)
    bad["models"]["t"].update(arch="toy_neox", n_heads=3)
    with pytest.raises(ConfigError, match=r"models\.t\.n_heads: d_model 16 is not divisible"):
        validate(bad)


SPECS = {
    "gpt_neox": {"arch": "gpt_neox", "d_model": 16, "n_layers": 2, "n_heads": 2},
    "mamba": {"arch": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4},
    "rwkv": {"arch": "rwkv", "d_model": 16, "n_layers": 2},
}
HF_CONFIG = {"gpt_neox": "GPTNeoXConfig", "mamba": "MambaConfig", "rwkv": "RwkvConfig"}


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_saved_config_is_read_without_transformers_and_equals_its_class(arch, tmp_path):
    """A config.json transformers 5 wrote is read as a SavedConfig: the same values as
    transformers' class gives, the same logits, the same folder when saved again."""
    import transformers

    torch.manual_seed(0)
    model = models.build_model(models.build_config(SPECS[arch], VOCAB, 64, 0)).eval()
    models.save_model(model, tmp_path / "a")
    again = models.load_model(tmp_path / "a")
    assert isinstance(again.config, models.SavedConfig)
    reference = getattr(transformers, HF_CONFIG[arch]).from_pretrained(str(tmp_path / "a"))
    assert again.config.to_hf().to_dict() == reference.to_dict()
    with torch.no_grad():
        assert torch.equal(again(x_ids()), model(x_ids()))
    models.save_model(again, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == \
        json.loads((tmp_path / "a" / "config.json").read_text())


def test_a_config_lacking_a_key_goes_through_transformers(tmp_path):
    """A legacy config.json (Pythia's rotary_pct instead of rope_parameters) is read by
    transformers' class, which derives the key; the forward is unchanged."""
    torch.manual_seed(0)
    model = models.build_model(models.build_config(SPECS["gpt_neox"], VOCAB, 64, 0)).eval()
    model.to_hf().save_pretrained(str(tmp_path))
    values = json.loads((tmp_path / "config.json").read_text())
    values["rotary_pct"] = values.pop("rope_parameters")["partial_rotary_factor"]
    (tmp_path / "config.json").write_text(json.dumps(values))
    again = models.load_model(tmp_path, external=True)
    assert isinstance(again.config, GPTNeoXConfig)
    assert again.config.rope_parameters["partial_rotary_factor"] == 1.0
    with torch.no_grad():
        assert torch.equal(again(x_ids()), model(x_ids()))


def test_loading_a_toy_model_imports_no_transformers(tmp_path):
    import subprocess
    import sys

    for arch, spec in SPECS.items():
        torch.manual_seed(0)
        models.save_model(models.build_model(models.build_config(spec, VOCAB, 64, 0)), tmp_path / arch)
    code = ("import sys; from universality.models import registry as r; import universality.models.gpt_neox, "
            "universality.models.mamba, universality.models.rwkv\n"
            f"for a in {sorted(SPECS)!r}: r.load_model({str(tmp_path)!r} + '/' + a)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
