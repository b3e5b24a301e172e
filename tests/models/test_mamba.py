"""MambaLM: numerical equality with transformers' MambaForCausalLM, weight round trips, hooks."""

import pytest
import torch
import torch.nn.functional as F
from transformers import MambaConfig, MambaForCausalLM

from universality.core.hooks import hooks, run_with_cache
from universality.models.mamba import MambaLM

VOCAB = 300


def tiny_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=16,
                expand=2, conv_kernel=4)
    base.update(kw)
    return MambaConfig(**base)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf = MambaForCausalLM(tiny_config()).eval()
    return hf, MambaLM.from_hf(hf).eval()


def ids(batch=2, pos=24, seed=0):
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def max_abs(a, b):
    return (a - b).abs().max().item()


def lm_loss(logits, x):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())


# ----------------------------------------------------------------------------- weights / logits
def test_state_dict_names_and_shapes_match_transformers(pair):
    hf, ours = pair
    a, b = hf.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert ours.lm_head.weight is ours.backbone.embeddings.weight  # tied like transformers
    fresh = MambaLM(tiny_config())
    assert [(k, v.shape) for k, v in fresh.state_dict().items()] == [(k, v.shape) for k, v in a.items()]


def test_logits_match_transformers(pair):
    hf, ours = pair
    x = ids()
    with torch.no_grad():
        got = ours(x)
        ref = hf(x).logits
    assert got.dtype == torch.float32 and got.shape == (2, 24, VOCAB)
    assert max_abs(got, ref) <= 1e-4


def test_three_layer_untied_model_matches():
    torch.manual_seed(1)
    hf = MambaForCausalLM(tiny_config(num_hidden_layers=3, tie_word_embeddings=False)).eval()
    ours = MambaLM.from_hf(hf)
    assert ours.lm_head.weight is not ours.backbone.embeddings.weight
    x = ids(seed=1)
    with torch.no_grad():
        assert max_abs(ours(x), hf(x).logits) <= 1e-4


def test_trained_model_matches_and_round_trips(tmp_path):
    torch.manual_seed(2)
    ours = MambaLM(tiny_config()).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    for step in range(3):
        x = ids(seed=10 + step)
        opt.zero_grad()
        lm_loss(ours(x), x).backward()
        opt.step()
    ours.eval()
    hf = ours.to_hf().eval()
    x = ids(seed=99)
    with torch.no_grad():
        assert max_abs(ours(x), hf(x).logits) <= 1e-4
    # save_pretrained -> MambaLM.from_pretrained (safetensors only) -> identical weights
    hf.save_pretrained(tmp_path / "m")
    loaded = MambaLM.from_pretrained(tmp_path / "m")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    # and our own save_pretrained is readable by transformers
    ours.save_pretrained(tmp_path / "m2")
    back = MambaForCausalLM.from_pretrained(tmp_path / "m2").eval()
    with torch.no_grad():
        assert max_abs(back(x).logits, hf(x).logits) == 0.0
    # from_hf(to_hf()) is the identity on weights
    again = MambaLM.from_hf(ours.to_hf())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())


def test_gradients_match_transformers_slow_path(pair):
    hf, ours = pair
    hf.train()
    ours.train()
    try:
        x = ids(batch=2, pos=16, seed=3)
        hf.zero_grad()
        ours.zero_grad()
        loss_hf = lm_loss(hf(x).logits, x)
        loss_ours = lm_loss(ours(x), x)
        loss_hf.backward()
        loss_ours.backward()
        assert abs(loss_hf.item() - loss_ours.item()) <= 1e-5
        ref = dict(hf.named_parameters())
        for name, p in ours.named_parameters():
            g, g_ref = p.grad, ref[name].grad
            scale = g_ref.abs().max().item()
            assert max_abs(g, g_ref) <= 1e-5 * max(scale, 1e-3), name
    finally:
        hf.eval()
        ours.eval()
        hf.zero_grad()
        ours.zero_grad()


# ----------------------------------------------------------------------------- hooks
def test_hook_names_shapes_and_identity(pair):
    _, ours = pair
    x = ids()
    with torch.no_grad():
        clean = ours(x)
    names = list(ours.hook_points)
    assert "blocks.1.mixer.hook_state" in names and "blocks.0.hook_resid_post" in names
    logits, cache = run_with_cache(ours, x, names)
    assert torch.equal(logits, clean)  # recording (incl. the hook_state path) changes nothing
    b, p, dm, di, n = 2, 24, 64, 128, 16
    expect = {"hook_resid_pre": (b, p, dm), "hook_resid_post": (b, p, dm),
              "hook_conv_in": (b, p, di), "hook_gate_in": (b, p, di), "hook_ssm_in": (b, p, di),
              "hook_delta": (b, p, di), "hook_B": (b, p, n), "hook_C": (b, p, n),
              "hook_state": (b, p, di, n), "hook_ssm_out": (b, p, di), "hook_gate": (b, p, di),
              "hook_gated": (b, p, di), "hook_out": (b, p, dm)}
    for name, t in cache.items():
        assert tuple(t.shape) == expect[name.rsplit(".", 1)[1]], name
    # identity hooks (returning None or the tensor itself) leave the logits unchanged
    with hooks(ours, {n_: (lambda t, _: t) for n_ in names[:7]} | {names[-1]: lambda t, _: None}):
        with torch.no_grad():
            assert torch.equal(ours(x), clean)
    # resid_post of block 0 is resid_pre of block 1
    assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])


def test_ssm_in_is_silu_of_causal_conv(pair):
    _, ours = pair
    _, cache = run_with_cache(ours, ids(), ["blocks.1.mixer.hook_conv_in", "blocks.1.mixer.hook_ssm_in",
                                          "blocks.1.mixer.hook_gate_in", "blocks.1.mixer.hook_gate"])
    conv = ours.backbone.layers[1].mixer.conv1d
    x = cache["blocks.1.mixer.hook_conv_in"]  # [b, pos, d_inner]
    L, K = x.shape[1], conv.weight.shape[-1]
    xp = F.pad(x, (0, 0, K - 1, 0))  # causal: pad K-1 positions on the left
    manual = sum(xp[:, k:k + L] * conv.weight[:, 0, k] for k in range(K)) + conv.bias
    mix = "blocks.1.mixer."
    torch.testing.assert_close(cache[mix + "hook_ssm_in"], F.silu(manual), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache[mix + "hook_gate"], F.silu(cache[mix + "hook_gate_in"]))


def test_gated_output_feeds_out_proj(pair):
    _, ours = pair
    mix = "blocks.1.mixer."
    _, cache = run_with_cache(ours, ids(), [mix + h for h in ("hook_ssm_out", "hook_gate", "hook_gated", "hook_out")])
    torch.testing.assert_close(cache[mix + "hook_gated"], cache[mix + "hook_ssm_out"] * cache[mix + "hook_gate"])
    out_proj = ours.backbone.layers[1].mixer.out_proj
    torch.testing.assert_close(cache[mix + "hook_out"], out_proj(cache[mix + "hook_gated"]), rtol=1e-5, atol=1e-6)


def test_unknown_hook_name_raises(pair):
    _, ours = pair
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):
        with hooks(ours, {"blocks.0.hook_nope": lambda t, n: None}):
            pass
    with pytest.raises(KeyError):
        run_with_cache(ours, ids(), ["nope"])
    assert all(not hp.active for hp in ours.hook_points.values())


@pytest.mark.parametrize("site", ["blocks.0.mixer.hook_ssm_in", "blocks.0.mixer.hook_delta",
                                  "blocks.1.mixer.hook_C", "blocks.0.hook_resid_post"])
def test_replacing_a_value_changes_logits(pair, site):
    _, ours = pair
    x = ids()
    with torch.no_grad():
        clean = ours(x)
        with hooks(ours, {site: lambda t, n: t * 1.5}):
            patched = ours(x)
    assert max_abs(patched, clean) > 1e-3
    assert not any(hp.active for hp in ours.hook_points.values())  # hooks removed on exit


def test_state_patch_identity_and_causality(pair):
    _, ours = pair
    site = "blocks.0.mixer.hook_state"
    x, x_other = ids(seed=0), ids(seed=5)
    t = 9
    with torch.no_grad():
        clean = ours(x)
    _, same_cache = run_with_cache(ours, x, [site])
    _, other_cache = run_with_cache(ours, x_other, [site])

    def patch_from(cache):
        def fn(h, name):
            h = h.clone()
            h[:, t] = cache[site][:, t]
            return h
        return fn

    with torch.no_grad():
        with hooks(ours, {site: patch_from(same_cache)}):
            same = ours(x)
        with hooks(ours, {site: patch_from(other_cache)}):
            other = ours(x)
    assert torch.equal(same, clean)  # clean value of the same input: identity
    assert torch.equal(other[:, :t], clean[:, :t])  # earlier positions untouched
    assert (other[:, t:] - clean[:, t:]).abs().amax(dim=-1).min().item() > 0  # every later position moves
    assert max_abs(other[:, t:], clean[:, t:]) > 1e-3


def test_stop_at_layer_returns_residual(pair):
    _, ours = pair
    x = ids()
    logits, cache = run_with_cache(ours, x, ["blocks.0.hook_resid_post"])
    with torch.no_grad():
        resid = ours(x, stop_at_layer=1)
    assert torch.equal(resid, cache["blocks.0.hook_resid_post"])


def test_causal_conv_silu_matches_conv1d_and_gradcheck():
    from universality.models.mamba import CausalConvSiLU

    g = torch.Generator().manual_seed(0)
    for L in (1, 2, 7):  # shorter and longer than the kernel
        x = torch.randn(L, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
        ref = F.silu(F.conv1d(x.permute(1, 2, 0), w, b, padding=3, groups=5)[..., :L]).permute(2, 0, 1)
        torch.testing.assert_close(CausalConvSiLU.apply(x, w, b), ref)
        assert torch.autograd.gradcheck(CausalConvSiLU.apply, (x, w, b))
        assert torch.autograd.gradcheck(lambda x, w: CausalConvSiLU.apply(x, w, None), (x, w))


def test_hooks_module_is_architecture_agnostic():
    from torch import nn

    from universality.core.hooks import HookPoint

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.hp = HookPoint("mid")
            self.hook_points = {"mid": self.hp}

        def forward(self, x):
            return self.lin(self.hp(x * 2))

    toy = Toy()
    x = torch.randn(2, 3)
    logits, cache = run_with_cache(toy, x, ["mid"])
    torch.testing.assert_close(cache["mid"], x * 2)
    seen = []
    with hooks(toy, {"mid": [lambda t, n: t + 1, lambda t, n: seen.append((n, t.clone()))]}):
        out = toy(x)
    torch.testing.assert_close(out, toy.lin(x * 2 + 1))
    torch.testing.assert_close(seen[0][1], x * 2 + 1)  # functions chain in order
    assert seen[0][0] == "mid" and not toy.hp.active
    # fwd_hooks patch before recording: the cache holds the patched value
    _, cache = run_with_cache(toy, x, ["mid"], fwd_hooks={"mid": lambda t, n: t * 0})
    assert cache["mid"].abs().max() == 0
    with pytest.raises(TypeError):
        run_with_cache(nn.Linear(2, 2), torch.randn(1, 2), ["x"])
    with pytest.raises(RuntimeError):  # hooks are removed even if the body raises
        with hooks(toy, {"mid": lambda t, n: None}):
            raise RuntimeError
    assert not toy.hp.active
