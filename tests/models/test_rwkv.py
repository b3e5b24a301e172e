"""RWKV-4: the WKV recurrence (C kernel, torch code) against a float64 reference, and RwkvLM
against transformers' RwkvForCausalLM (logits, save/load both ways, hook sites, state patching)."""
import copy

import pytest
import torch
from transformers import RwkvConfig, RwkvForCausalLM

from universality.core.hooks import hooks, run_with_cache
from universality.models import registry as models
from universality.models import wkv as W
from universality.models.rwkv import RwkvLM, state_hook_names, wkv_state_patch

needs_kernel = pytest.mark.skipif(W._native() is None, reason="no C compiler: the kernel cannot be built")


def make_inputs(batch=3, T=19, C=7, dtype=torch.float64, seed=0, k_scale=2.0):
    g = torch.Generator().manual_seed(seed)
    td = torch.randn(C, generator=g, dtype=dtype)
    tf = torch.randn(C, generator=g, dtype=dtype)
    k = torch.randn(batch, T, C, generator=g, dtype=dtype) * k_scale
    v = torch.randn(batch, T, C, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (td, tf, k, v)]


def grads(fn, xs, gy):
    return torch.autograd.grad((fn(*xs) * gy.to(xs[0].dtype)).sum(), xs)


# ------------------------------------------------------------------ the recurrence
def test_reference_is_the_definition_on_a_hand_computed_case():
    """T = 2, one channel: y_0 = v_0, y_1 = (e^{k_0} v_0 + e^{u+k_1} v_1) / (e^{k_0} + e^{u+k_1})."""
    td, tf = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    k = torch.tensor([[[0.2], [-0.4]]], dtype=torch.float64)
    v = torch.tensor([[[1.5], [-2.0]]], dtype=torch.float64)
    a, b = torch.exp(k[0, 0, 0]), torch.exp(0.5 + k[0, 1, 0])
    want = torch.tensor([1.5, (a * 1.5 + b * -2.0) / (a + b)], dtype=torch.float64)
    torch.testing.assert_close(W.wkv_ref(td, tf, k, v)[0, :, 0], want)
    torch.testing.assert_close(W.wkv(td, tf, k, v)[0, :, 0], want)


def test_torch_path_matches_reference_float64_values_and_gradients():
    xs = make_inputs()
    gy = torch.randn(3, 19, 7, dtype=torch.float64)
    torch.testing.assert_close(W.wkv(*xs, use_native=False), W.wkv_ref(*xs), rtol=1e-12, atol=1e-12)
    got = grads(lambda *a: W.wkv(*a, use_native=False), xs, gy)
    ref = grads(W.wkv_ref, xs, gy)
    for name, a, b in zip(("time_decay", "time_first", "k", "v"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"grad {name}")


def test_gradcheck_float64():
    """The hand-written backward against finite differences (the float64 path is the torch code)."""
    xs = make_inputs(batch=2, T=6, C=3)
    assert torch.autograd.gradcheck(lambda *a: W.wkv(*a), xs)


@needs_kernel
def test_c_kernel_float32_matches_float64_reference():
    """float32 C kernel vs the float64 definition: values and gradients within 2e-6 of the scale."""
    xs = make_inputs(batch=4, T=40, C=33)          # 33 channels: a ragged vector tail
    x32 = [x.detach().float().requires_grad_() for x in xs]
    assert W.uses_kernel(x32[2])
    gy = torch.randn(4, 40, 33, dtype=torch.float64)
    y = W.wkv(*x32)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), W.wkv_ref(*xs), rtol=2e-6, atol=2e-6)
    got = grads(W.wkv, x32, gy.float())
    ref = grads(W.wkv_ref, xs, gy)
    for name, a, b in zip(("time_decay", "time_first", "k", "v"), got, ref):
        scale = max(b.abs().max().item(), 1.0)
        assert (a.double() - b).abs().max().item() <= 2e-6 * scale, name


@needs_kernel
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_c_kernel_matches_torch_fallback_float32(workers):
    """Large keys (|k| up to ~30) exercise the running max; batch shards do not change results."""
    xs = [x.detach().float().requires_grad_() for x in make_inputs(batch=9, T=64, C=20, k_scale=10.0)]
    gy = torch.randn(9, 64, 20)
    yc, sc = W.wkv(*xs, return_states=True, use_native=True, workers=workers)
    yt, st = W.wkv(*xs, return_states=True, use_native=False)
    torch.testing.assert_close(yc, yt, rtol=1e-5, atol=1e-5)
    for a, b in zip(sc, st):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    gc = grads(lambda *a: W.wkv(*a, use_native=True, workers=workers), xs, gy)
    gt = grads(lambda *a: W.wkv(*a, use_native=False), xs, gy)
    for name, a, b in zip(("time_decay", "time_first", "k", "v"), gc, gt):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(b.abs().max().item(), 1.0), msg=name)
    again = W.wkv(*xs, use_native=True, workers=workers)
    assert torch.equal(again, yc)                                # deterministic


def test_states_are_transformers_generation_state():
    """(num, den, max) after the last position = transformers' returned state, and num e^max is
    the defining numerator sum."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    xs = [x.detach().float() for x in make_inputs(batch=2, T=12, C=5)]
    y, states = W.wkv(*xs, return_states=True)
    y_hf, state_hf = rwkv_linear_attention_cpu(*xs, return_state=True)
    torch.testing.assert_close(y, y_hf, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(states, state_hf):
        torch.testing.assert_close(ours[:, -1], theirs, rtol=1e-5, atol=1e-6)
    td, _, k, v = (x.double() for x in xs)
    t = 7
    real = sum(torch.exp((t - i) * -torch.exp(td) + k[:, i]) * v[:, i] for i in range(t + 1))
    torch.testing.assert_close(states[0][:, t].double() * torch.exp(states[2][:, t].double()), real,
                               rtol=1e-5, atol=1e-6)


def test_propagated_patch_equals_a_recurrence_started_from_the_patched_state():
    """Overriding the state at t with another run's state = running the other run up to t and
    this run's k, v afterwards (computed from scratch by the reference sums)."""
    a = [x.detach() for x in make_inputs(batch=2, T=10, C=4, seed=1)]
    b = [x.detach() for x in make_inputs(batch=2, T=10, C=4, seed=2)]
    td, tf = a[0], a[1]
    y_a, st_a = W.wkv(td, tf, a[2], a[3], return_states=True)
    _, st_b = W.wkv(td, tf, b[2], b[3], return_states=True)
    t = 4
    patched = tuple(s.clone() for s in st_a)
    for p, s in zip(patched, st_b):
        p[:, t] = s[:, t]
    y, states = W.propagate_wkv_patch(td, tf, a[2], a[3], y_a, st_a, patched)
    mixed_k = torch.cat([b[2][:, :t + 1], a[2][:, t + 1:]], 1)
    mixed_v = torch.cat([b[3][:, :t + 1], a[3][:, t + 1:]], 1)
    want = W.wkv_ref(td, tf, mixed_k, mixed_v)
    assert torch.equal(y[:, :t + 1], y_a[:, :t + 1])
    torch.testing.assert_close(y[:, t + 1:], want[:, t + 1:], rtol=1e-10, atol=1e-10)
    _, st_mixed = W.wkv(td, tf, mixed_k, mixed_v, return_states=True)
    for i in range(3):  # from t on, the states are the mixed run's; before t, this run's
        torch.testing.assert_close(states[i][:, t:], st_mixed[i][:, t:], rtol=1e-12, atol=1e-12)
        assert torch.equal(states[i][:, :t], st_a[i][:, :t])


# ------------------------------------------------------------------ the model vs transformers
CONFIGS = [
    dict(vocab_size=61, hidden_size=24, num_hidden_layers=3, attention_hidden_size=16, intermediate_size=40),
    dict(vocab_size=37, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=96),
]


def pair(i: int, seed: int = 0):
    torch.manual_seed(seed)
    hf = RwkvForCausalLM(RwkvConfig(context_length=64, rescale_every=0, **CONFIGS[i]))
    with torch.no_grad():  # transformers' init leaves time_first = 1 everywhere: vary it
        for block in hf.rwkv.blocks:
            block.attention.time_first.normal_()
    return hf, RwkvLM.from_hf(hf)


def ids(vocab, batch=3, pos=21, seed=5):
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("i", [0, 1])
@pytest.mark.parametrize("train", [True, False])
def test_logits_and_gradients_match_transformers(i, train):
    hf, ours = pair(i)
    hf.train(train), ours.train(train)
    x = ids(CONFIGS[i]["vocab_size"])
    # transformers' eval mode defaults to its generation cache, whose state is hidden_size wide
    # (it fails when attention_hidden_size differs): the logits do not depend on it.
    ref = hf(x, use_cache=False).logits
    got = ours(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # A random cotangent: the gradient of e.g. mean(logits^2) w.r.t. early layers is a small
    # difference of large terms (~1% float32 cancellation in either implementation).
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(9))
    (ref * cot).sum().backward()
    (got * cot).sum().backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        g = theirs[name].grad
        assert (p.grad - g).abs().max().item() <= 1e-5 * g.abs().max().item(), name


def test_save_loads_in_transformers_and_a_transformers_folder_loads_through_the_registry(tmp_path):
    hf, ours = pair(0, seed=3)
    x = ids(61)
    models.save_model(ours, tmp_path / "ours")
    back = RwkvForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    assert back.config.rescale_every == 0
    with torch.no_grad():
        torch.testing.assert_close(back(x, use_cache=False).logits, ours.eval()(x), rtol=1e-5, atol=1e-5)
    hf.config.rescale_every = 6                      # as hub RWKV-4 checkpoints
    hf.save_pretrained(str(tmp_path / "hf"))
    loaded = models.load_model(tmp_path / "hf", external=True)  # a transformers folder: not sealed by us
    assert isinstance(loaded, RwkvLM) and not loaded.training and loaded.config.rescale_every == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), hf.train()(x).logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(loaded(x), ours(x))


def test_fresh_model_has_transformers_initialisation():
    spec = {"arch": "rwkv", "d_model": 16, "n_layers": 2, "d_mlp": 48}
    config = models.build_config(spec, 40, 64, 0)
    torch.manual_seed(4)
    ours = models.build_model(config)
    torch.manual_seed(4)
    hf = RwkvForCausalLM(config)
    assert ours.training and models.site_width(ours, "neuron") == 48
    theirs = hf.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    for name, t in ours.state_dict().items():
        assert torch.equal(t, theirs[name]), name


def test_hook_sites_against_transformers_modules():
    hf, ours = pair(0)
    hf.eval(), ours.eval()
    x = ids(61, batch=2, pos=9)
    with torch.no_grad():
        ref = hf(x, use_cache=False, output_hidden_states=True)
        _, cache = run_with_cache(ours, x)
        block, h = hf.rwkv.blocks[1], ref.hidden_states[0]
        att = block.attention
        r, k, v, _ = att.extract_key_value(block.ln1(h))
        mid = h + att(block.ln1(h))[0]
        ffn = block.feed_forward
        hidden = block.ln2(mid)
        mix = ffn.time_mix_key
        key = ffn.key(hidden * mix + ffn.time_shift(hidden) * (1 - mix))
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], ref.hidden_states[0], **close)
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], h, **close)
    torch.testing.assert_close(cache["blocks.1.att.hook_receptance"], r, **close)
    torch.testing.assert_close(cache["blocks.1.att.hook_key"], k, **close)
    torch.testing.assert_close(cache["blocks.1.att.hook_value"], v, **close)
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid"], mid, **close)
    torch.testing.assert_close(cache["blocks.1.ffn.hook_post"], torch.relu(key) ** 2, **close)
    _, state = W.wkv(att.time_decay, att.time_first, k, v, return_states=True)
    for name, s in zip(state_hook_names(1), state):
        torch.testing.assert_close(cache[name], s, **close)
        assert cache[name].shape == (2, 9, 16)
    with models.capture(ours, [("neuron", 1), ("resid", 2)]) as got:
        ours(x)
    assert got[("neuron", 1)].shape == (2, 9, 40) and got[("resid", 2)].shape == (2, 9, 24)


def test_state_patch_from_another_run_equals_that_run_up_to_the_position():
    """Layer 0's WKV state at t replaced by run B's: its wkv output after t is the reference
    recurrence over B's keys/values up to t and A's after; nothing up to t changes; freezing the
    states at the run's own values changes nothing."""
    _, ours = pair(1)
    ours.eval()
    a, b = ids(37, batch=2, pos=12, seed=1), ids(37, batch=2, pos=12, seed=2)
    names = state_hook_names(0)
    t = 5
    with torch.no_grad():
        clean, cache_a = run_with_cache(ours, a, names + ["blocks.0.att.hook_key", "blocks.0.att.hook_value",
                                                          "blocks.0.att.hook_wkv"])
        _, cache_b = run_with_cache(ours, b, names + ["blocks.0.att.hook_key", "blocks.0.att.hook_value"])
        patched, cache_p = run_with_cache(ours, a, ["blocks.0.att.hook_wkv", "blocks.1.hook_resid_pre"],
                                          fwd_hooks=wkv_state_patch(0, cache_b, [t]))
        with hooks(ours, wkv_state_patch(0, cache_a, list(range(12)))):
            frozen = ours(a)
    assert torch.equal(frozen, clean)
    assert torch.equal(patched[:, :t + 1], clean[:, :t + 1]) and not torch.allclose(patched[:, t + 1:], clean[:, t + 1:])
    att = ours.rwkv.blocks[0].attention
    ka, va = cache_a["blocks.0.att.hook_key"], cache_a["blocks.0.att.hook_value"]
    kb, vb = cache_b["blocks.0.att.hook_key"], cache_b["blocks.0.att.hook_value"]
    mixed_k, mixed_v = torch.cat([kb[:, :t + 1], ka[:, t + 1:]], 1), torch.cat([vb[:, :t + 1], va[:, t + 1:]], 1)
    want = W.wkv_ref(att.time_decay.detach(), att.time_first.detach(), mixed_k, mixed_v)
    torch.testing.assert_close(cache_p["blocks.0.att.hook_wkv"][:, t + 1:].double(), want[:, t + 1:],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache_p["blocks.0.att.hook_wkv"][:, :t + 1], cache_a["blocks.0.att.hook_wkv"][:, :t + 1])


def test_forward_splits_into_embed_run_blocks_unembed():
    _, ours = pair(0)
    x = ids(61, batch=2, pos=8)
    arch = models.arch_of(ours)
    with torch.no_grad():
        clean = ours.eval()(x)
        with models.capture(ours, [("resid", 1)]) as cache:
            ours(x)
        from_block_2 = arch.unembed(ours, arch.run_blocks(ours, cache[("resid", 1)], 2))
        whole = arch.unembed(ours, arch.run_blocks(ours, arch.embed(ours, x)))
        with models.patch_resid(ours, 1, torch.zeros_like):
            zeroed = ours(x)
    assert torch.equal(whole, clean) and torch.equal(from_block_2, clean)
    assert not torch.equal(zeroed, clean)
    assert torch.equal(copy.deepcopy(ours)(x), clean)
