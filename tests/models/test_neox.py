"""NeoXLM: numerical equality with transformers' GPTNeoXForCausalLM, loading, per-head hook sites."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from universality.core.hooks import hooks, run_with_cache
from universality.models.gpt_neox import NeoXLM

VOCAB = 200


def tiny_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, hidden_dropout=0.0,
                attention_dropout=0.0, tie_word_embeddings=False)
    base.update(kw)
    return GPTNeoXConfig(**base)


def ids(batch=2, pos=20, seed=0):
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def trained(hf, steps=30):
    """A few Adam steps on a random copy task, so weights are off their initial distributions."""
    opt = torch.optim.Adam(hf.parameters(), lr=3e-3)
    hf.train()
    for s in range(steps):
        x = ids(4, 24, seed=100 + s)
        x = torch.cat([x[:, :12], x[:, :12]], 1)
        loss = F.cross_entropy(hf(x).logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return hf.eval()


CONFIGS = {
    "pythia-like": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.25}),
    "toy-zoo": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                     "partial_rotary_factor": 1.0}),
    "sequential": dict(use_parallel_residual=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("train", [False, True], ids=["random", "trained"])
def test_logits_match_transformers(name, train):
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(tiny_config(**CONFIGS[name])).eval()
    if train:
        hf = trained(hf)
    ours = NeoXLM.from_hf(hf)
    x = ids()
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def test_save_pretrained_round_trip_reads_the_on_disk_head_name(tmp_path):
    from safetensors import safe_open

    torch.manual_seed(1)
    hf = GPTNeoXForCausalLM(tiny_config()).eval()
    hf.save_pretrained(str(tmp_path))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "embed_out.weight" in f.keys()  # Pythia's name for the unembedding
    ours = NeoXLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert (ours(ids()) - hf(ids()).logits).abs().max().item() <= 1e-4


def test_state_dict_mismatch_names_the_keys():
    ours = NeoXLM(tiny_config())
    state = dict(GPTNeoXForCausalLM(tiny_config()).state_dict())
    del state["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]
    with pytest.raises(KeyError, match="dense_4h_to_h.bias"):
        ours.load_hf_state_dict(state)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    return NeoXLM.from_hf(trained(GPTNeoXForCausalLM(tiny_config(**CONFIGS["pythia-like"]))))


def test_hook_shapes_and_recording_changes_nothing(model):
    x = ids()
    with torch.no_grad():
        clean = model(x)
    logits, cache = run_with_cache(model, x)  # every site, hook_result included
    assert torch.allclose(logits, clean, atol=1e-6)
    b, p, h, dh, dm, dmlp = 2, 20, 4, 8, 32, 64
    shapes = {"hook_resid_pre": (b, p, dm), "hook_q": (b, p, h, dh), "hook_k": (b, p, h, dh),
              "hook_v": (b, p, h, dh), "hook_pattern": (b, h, p, p), "hook_z": (b, p, h, dh),
              "hook_result": (b, p, h, dm), "hook_attn_out": (b, p, dm), "hook_resid_mid": (b, p, dm),
              "hook_pre": (b, p, dmlp), "hook_post": (b, p, dmlp), "hook_mlp_out": (b, p, dm),
              "hook_resid_post": (b, p, dm)}
    assert len(cache) == 2 * len(shapes)
    for name, t in cache.items():
        assert tuple(t.shape) == shapes[name.rsplit(".", 1)[1]], name
    assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
    dense = model.gpt_neox.layers[1].attention.dense
    torch.testing.assert_close(cache["blocks.1.attn.hook_result"].sum(2) + dense.bias,
                               cache["blocks.1.hook_attn_out"], rtol=1e-5, atol=1e-5)


def test_attention_against_a_float64_loop(model):
    """pattern and z from q, k, v by the textbook formula, one query at a time, in float64."""
    x = ids(1, 12)
    names = [f"blocks.0.attn.{h}" for h in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z")]
    _, c = run_with_cache(model, x, names)
    q, k, v, pat, z = (c[n][0].double().numpy() for n in names)  # q [pos, head, d]
    n, heads, d = q.shape
    for h in range(heads):
        for i in range(n):
            s = np.array([q[i, h] @ k[j, h] / np.sqrt(d) for j in range(i + 1)])
            w = np.exp(s - s.max())
            w /= w.sum()
            np.testing.assert_allclose(pat[h, i, : i + 1], w, rtol=1e-4, atol=1e-6)
            assert np.all(pat[h, i, i + 1 :] == 0)          # causal
            np.testing.assert_allclose(z[i, h], w @ v[: i + 1, h], rtol=1e-4, atol=1e-5)


def test_rotary_is_a_rotation_of_the_first_dims(model):
    """RoPE leaves the un-rotated dims alone and keeps each rotated pair's norm."""
    x = ids(1, 10)
    attn = model.gpt_neox.layers[0].attention
    _, c = run_with_cache(model, x, ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q"])
    with torch.no_grad():
        hidden = model.gpt_neox.layers[0].input_layernorm(c["blocks.0.hook_resid_pre"])
        raw = attn.query_key_value(hidden).view(1, 10, attn.n_heads, -1)[..., : attn.d_head]
    r = attn.rotary_ndims
    q = c["blocks.0.attn.hook_q"]
    assert 0 < r < attn.d_head
    torch.testing.assert_close(q[..., r:], raw[..., r:])
    half = r // 2
    pair = lambda t: t[..., :half] ** 2 + t[..., half:r] ** 2  # rotate_half pairs i with i + r/2
    torch.testing.assert_close(pair(q), pair(raw), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q[:, 0], raw[:, 0])             # position 0: angle 0


def test_patching_one_head_changes_only_later_positions_and_that_head(model):
    x, x2 = ids(1, 16, seed=3), ids(1, 16, seed=4)
    _, other = run_with_cache(model, x2, ["blocks.1.attn.hook_z"])

    def put(t, _):
        t = t.clone()
        t[:, 8:, 2] = other["blocks.1.attn.hook_z"][:, 8:, 2]
        return t

    with torch.no_grad():
        # The clean run on the same (explicit-attention) path as the patched one: a hook on
        # hook_z selects it; without hooks the sdpa path agrees to float32 rounding only.
        with hooks(model, {"blocks.1.attn.hook_z": lambda t, _: None}):
            clean = model(x)
        with hooks(model, {"blocks.1.attn.hook_z": put}):
            patched = model(x)
    assert torch.equal(patched[:, :8], clean[:, :8])
    assert (patched[:, 8:] - clean[:, 8:]).abs().max() > 1e-3


def test_gelu_is_bitwise_transformers_activation():
    """The MLP's ``gelu`` is ``nn.GELU()`` (no transformers.activations import), and gives
    exactly what transformers' ``ACT2FN["gelu"]`` gives, values and gradients."""
    from transformers.activations import ACT2FN

    from universality.models.gpt_neox import _act

    x = torch.randn(4096, generator=torch.Generator().manual_seed(3)) * 4
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = _act("gelu")(a), ACT2FN["gelu"](b)
    assert torch.equal(ya, yb)
    ya.sum().backward(), yb.sum().backward()
    assert torch.equal(a.grad, b.grad)
    assert type(_act("gelu_new")) is type(ACT2FN["gelu_new"])  # other names: transformers' own
