"""The SAE recipe switches (issue 19): penalty form, l1 warm-up, gradient clipping, input
normalisation, and the two seeds of a run (initialisation alone, data order alone).

Each switch is checked to change what it says and nothing else; the plain penalty's gradients are
checked against autograd and against central differences of a float64 NumPy reference.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from universality.sae import train as train_mod
from universality.sae.config import SAETrainConfig
from universality.sae.model import SAE, loss_and_grads
from universality.sae.train import train_sae

from test_sae import FAST, D, np_forward, params_np, random_sae, weights, write_array, synthetic


def np_loss_plain(W_enc, b_enc, W_dec, b_dec, x, l1):
    """The paper's Sec. 3.3 objective: squared error + l1 * sum_i f_i (no decoder norms)."""
    x_hat, f = np_forward(W_enc, b_enc, W_dec, b_dec, x)
    return ((x_hat - x) ** 2).sum(axis=1).mean() + l1 * f.sum(axis=1).mean()


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "L0.zarr"
    return write_array(path, synthetic(3000), dtype="float16")


def test_plain_penalty_gradients_match_autograd_and_finite_differences():
    sae = random_sae(3, torch.float64)
    x = torch.randn(29, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    l1 = 0.37
    sae.zero_grad()
    auto = sae.loss(x, l1, penalty="plain")
    auto["loss"].backward()
    terms, grads, _ = loss_and_grads(*[p.detach() for p in sae.parameters()], x, l1, penalty="plain")
    P, xn = params_np(sae), x.numpy()
    assert float(terms["loss"]) == pytest.approx(np_loss_plain(*P, xn, l1), rel=1e-12)
    for (name, p), g in zip(sae.named_parameters(), grads):
        np.testing.assert_allclose(g.numpy(), p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    rng, h = np.random.default_rng(5), 1e-6
    for k, g in enumerate(grads):
        for _ in range(6):
            idx = tuple(rng.integers(0, s) for s in P[k].shape)
            plus, minus = [p.copy() for p in P], [p.copy() for p in P]
            plus[k][idx] += h
            minus[k][idx] -= h
            num = (np_loss_plain(*plus, xn, l1) - np_loss_plain(*minus, xn, l1)) / (2 * h)
            assert g.numpy()[idx] == pytest.approx(num, rel=1e-5, abs=1e-7)


def test_plain_and_weighted_penalties_differ_exactly_by_the_decoder_norm_terms():
    sae = random_sae(6, torch.float64)
    x = torch.randn(31, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    l1, B = 0.5, x.shape[0]
    params = [p.detach() for p in sae.parameters()]
    tw, (gWe_w, gbe_w, gWd_w, gbd_w), f_w = loss_and_grads(*params, x, l1)
    f_w = f_w.clone()
    tp, (gWe_p, gbe_p, gWd_p, gbd_p), f_p = loss_and_grads(*params, x, l1, penalty="plain")
    W_dec = params[2]
    n, fsum = W_dec.norm(dim=1), f_w.sum(dim=0)
    assert torch.equal(f_w, f_p) and float(tw["mse"]) == float(tp["mse"])
    assert float(tp["sparsity"]) == pytest.approx(float(fsum.sum()) / B, rel=1e-12)
    assert float(tw["sparsity"]) == pytest.approx(float(fsum @ n) / B, rel=1e-12)
    # the decoder gradient loses (l1/B) * sum_b f_bi * W_dec[i] / n_i; b_dec's is the same
    np.testing.assert_allclose((gWd_w - gWd_p).numpy(), ((l1 / B) * fsum / n)[:, None].numpy() * W_dec.numpy(),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gbd_w, gbd_p, rtol=0, atol=0)
    # dL/dpre differs by (l1/B) (n_i - 1) where the feature is active
    active = (f_w > 0).double()
    np.testing.assert_allclose((gbe_w - gbe_p).numpy(), ((l1 / B) * (n - 1) * active.sum(0)).numpy(),
                               rtol=1e-9, atol=1e-12)
    assert not torch.allclose(gWe_w, gWe_p)


def test_default_penalty_is_bitwise_the_decoder_norm_form():
    sae = random_sae(2)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(3))
    params = [p.detach() for p in sae.parameters()]
    a = loss_and_grads(*params, x, 0.7)
    b = loss_and_grads(*params, x, 0.7, penalty="decoder_norm")
    assert all(torch.equal(g, h) for g, h in zip(a[1], b[1])) and torch.equal(a[0]["loss"], b[0]["loss"])
    with pytest.raises(ValueError, match="l1_penalty"):
        loss_and_grads(*params, x, 0.7, penalty="l2")


@pytest.mark.parametrize("changes, message", [
    ({"l1_penalty": "l2"}, "l1_penalty"), ({"normalize": "whiten"}, "normalize"),
    ({"l1_warmup": 1.5}, "l1_warmup"), ({"grad_clip": 0.0}, "grad_clip")])
def test_bad_recipe_values_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        SAETrainConfig(**changes)


def test_plain_penalty_trains_and_is_recorded(acts, tmp_path):
    m = train_sae(acts, tmp_path / "p", FAST.replace(l1_penalty="plain"), progress=False)
    w = train_sae(acts, tmp_path / "w", FAST, progress=False)
    assert m["config"]["l1_penalty"] == "plain" and w["config"]["l1_penalty"] == "decoder_norm"
    cfg = json.loads((tmp_path / "p" / "cfg.json").read_text())
    assert "sum_i f_i)" in cfg["metadata"]["loss"] and "W_dec" not in cfg["metadata"]["loss"].split("+")[1]
    assert not np.array_equal(weights(tmp_path / "p")["W_dec"], weights(tmp_path / "w")["W_dec"])
    assert 0 < m["explained_variance"] <= 1


def test_l1_warmup_and_grad_clip_switches(acts, tmp_path):
    def log(out):
        return [json.loads(s) for s in (out / "train_log.jsonl").read_text().splitlines()]

    base = FAST.replace(l1_warmup=0.5)
    train_sae(acts, tmp_path / "warm", base, progress=False)
    train_sae(acts, tmp_path / "flat", base.replace(l1_warmup=0.0), progress=False)
    warm, flat = log(tmp_path / "warm"), log(tmp_path / "flat")
    n_steps, l1 = FAST.train_tokens // FAST.batch_size, FAST.l1
    # the log row of step s shows the l1 of that step: l1 * min(1, s / (0.5 * n_steps))
    assert [r["l1"] for r in warm] == pytest.approx([l1 * min(1.0, r["step"] / (0.5 * n_steps)) for r in warm])
    assert all(r["l1"] == l1 for r in flat)
    train_sae(acts, tmp_path / "noclip", base.replace(grad_clip=None), progress=False)
    train_sae(acts, tmp_path / "clip", base.replace(grad_clip=1e-3), progress=False)
    a, b = weights(tmp_path / "noclip"), weights(tmp_path / "clip")
    assert not np.array_equal(a["W_enc"], b["W_enc"])


def test_normalize_switch_is_recorded_and_folded(acts, tmp_path):
    from universality.core import store
    from universality.sae.evaluate import evaluate

    for mode in ("none", "scale", "center_scale"):
        out = tmp_path / mode
        m = train_sae(acts, out, FAST.replace(normalize=mode), progress=False)
        rec = json.loads((out / "cfg.json").read_text())["metadata"]["input_normalization"]
        assert rec["mode"] == mode and (rec["shift"] is None) == (mode != "center_scale")
        assert (rec["scale"] == 1.0) == (mode == "none")
        again = evaluate(SAE.load(out), store.open_array(acts), slice(2700, 3000))  # raw activations in
        assert again["explained_variance"] == pytest.approx(m["explained_variance"], rel=1e-6)


class _Spy:
    """Records the initial decoder and the first training batch of each run."""

    def __init__(self, monkeypatch):
        self.runs = []
        real_init, real_buffer = SAE.initialized, train_mod.ShuffleBuffer
        spy = self

        def initialized(*args, **kwargs):
            sae = real_init(*args, **kwargs)
            spy.runs.append({"init": sae.W_dec.detach().clone()})
            return sae

        class Buffer(real_buffer):
            def batches(self, batch_size, start=0):
                for i, b in enumerate(super().batches(batch_size, start)):
                    if i == 0:
                        spy.runs[-1]["batch"] = b.copy()
                    yield b

        monkeypatch.setattr(train_mod.SAE, "initialized", staticmethod(initialized))
        monkeypatch.setattr(train_mod, "ShuffleBuffer", Buffer)


def test_init_seed_and_data_seed_each_change_only_what_they_say(acts, tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    runs = {"seed0": dict(seed=0), "seed1": dict(seed=1), "init1": dict(seed=0, init_seed=1),
            "data1": dict(seed=0, data_seed=1), "explicit0": dict(seed=0, init_seed=0, data_seed=0)}
    for name, kw in runs.items():
        m = train_sae(acts, tmp_path / name, FAST, progress=False, **kw)
        assert (m["config"]["init_seed"], m["config"]["data_seed"]) == (
            kw.get("init_seed", kw["seed"]), kw.get("data_seed", kw["seed"]))
    got = dict(zip(runs, spy.runs))
    same = lambda a, b, k: bool(np.array_equal(np.asarray(got[a][k]), np.asarray(got[b][k])))
    assert same("init1", "seed1", "init") and same("init1", "seed0", "batch")
    assert not same("init1", "seed0", "init") and not same("init1", "seed1", "batch")
    assert same("data1", "seed0", "init") and same("data1", "seed1", "batch")
    assert not same("data1", "seed1", "init") and not same("data1", "seed0", "batch")
    # explicit seeds equal to the SAE seed: bitwise the plain seed-0 run
    w = {name: weights(tmp_path / name) for name in runs}
    assert all(np.array_equal(w["explicit0"][k], w["seed0"][k]) for k in w["seed0"])
    for other in ("init1", "data1", "seed1"):
        assert not np.array_equal(w[other]["W_dec"], w["seed0"]["W_dec"])
