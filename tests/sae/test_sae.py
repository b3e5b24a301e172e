"""Unit tests of the SAE module (universality.sae.model) and its trainer (universality.sae.train).

References are slow float64 NumPy re-implementations of the formulas in the module docstrings.
Everything runs on tiny arrays (D=16, F=64) in a few seconds; the optional SAELens check adds
the import time of sae_lens when it is installed.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy

from universality.core import store
from universality.sae.buffer import ShuffleBuffer, estimate_normalization, holdout_split, split_rows
from universality.sae.config import SAETrainConfig
from universality.sae.evaluate import ce_loss_recovered, evaluate, explained_variance
from universality.sae.model import SAE, loss_and_grads, paper_decoder_norm
from universality.sae.optim import Adam
from universality.sae.train import SAETrainingError, train_sae

D, F = 16, 64


# ----------------------------------------------------------------------------- helpers
def np_forward(W_enc, b_enc, W_dec, b_dec, x):
    pre = x @ W_enc + b_enc
    f = np.maximum(pre, 0.0)
    return f @ W_dec + b_dec, f


def np_loss(W_enc, b_enc, W_dec, b_dec, x, l1):
    x_hat, f = np_forward(W_enc, b_enc, W_dec, b_dec, x)
    mse = ((x_hat - x) ** 2).sum(axis=1).mean()
    sparsity = (f * np.linalg.norm(W_dec, axis=1)).sum(axis=1).mean()
    return mse + l1 * sparsity, mse, sparsity


def random_sae(seed=0, dtype=torch.float32) -> SAE:
    sae = SAE.initialized(D, F, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # move away from the symmetric init so every term is exercised
        sae.W_enc.add_(0.3 * torch.randn(D, F, generator=g))
        sae.W_dec.add_(0.3 * torch.randn(F, D, generator=g))
        sae.b_enc.copy_(0.2 * torch.randn(F, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
    return sae.to(dtype)


def params_np(sae):
    return [getattr(sae, n).detach().double().numpy() for n in ("W_enc", "b_enc", "W_dec", "b_dec")]


def synthetic(n, d=D, n_true=48, seed=0):
    """Sparse-ish activations: a mean offset plus a few of n_true directions per token."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_true, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    act = (rng.random((n, n_true)) < 4.0 / n_true) * rng.exponential(1.0, (n, n_true))
    return (act @ dirs + 0.5 * rng.standard_normal(d) + 0.05 * rng.standard_normal((n, d))).astype(np.float32)


def write_array(path, data, chunk_rows=256, dtype="float32"):
    arr = store.create_array(path, data.shape, dtype, chunk_rows=chunk_rows)
    arr[:] = data.astype(dtype)
    store.seal(path)  # as the activations rule writes it
    return path


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    """3,000 x 16 float16 activations in 256-row chunks (last 300 rows held out by default)."""
    path = tmp_path_factory.mktemp("acts") / "L0.zarr"
    return write_array(path, synthetic(3000), dtype="float16")


# lr_decay 0: the trainer's default before SAETrainConfig took the schema's defaults
FAST = SAETrainConfig(expansion=4, l1=0.5, lr=3e-3, batch_size=64, train_tokens=64 * 40, buffer_tokens=512,
                      checkpoint_every=0, log_every=5, lr_decay=0.0)


def weights(path):
    return load_numpy(str(path / "sae_weights.safetensors"))


# ----------------------------------------------------------------------------- module
def test_forward_and_loss_match_numpy_reference():
    sae = random_sae(1)
    x = torch.randn(37, D, generator=torch.Generator().manual_seed(2))
    x_hat, f = sae(x)
    ref_hat, ref_f = np_forward(*params_np(sae), x.double().numpy())
    np.testing.assert_allclose(f.detach().numpy(), ref_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_hat.detach().numpy(), ref_hat, rtol=1e-5, atol=1e-5)
    assert (ref_f > 0).any() and (ref_f == 0).any()
    terms = {k: v.detach() for k, v in sae.loss(x, l1=0.7).items()}
    ref = np_loss(*params_np(sae), x.double().numpy(), 0.7)
    for key, r in zip(("loss", "mse", "sparsity"), ref):
        assert float(terms[key]) == pytest.approx(r, rel=1e-5)
    fused, _, _ = loss_and_grads(*[p.detach() for p in sae.parameters()], x, 0.7)
    assert [n for n, _ in sae.named_parameters()] == ["W_enc", "b_enc", "W_dec", "b_dec"]
    for key, r in zip(("loss", "mse", "sparsity"), ref):
        assert float(fused[key]) == pytest.approx(r, rel=1e-5)


def test_fused_gradients_match_autograd_and_finite_differences_float64():
    sae = random_sae(3, torch.float64)
    x = torch.randn(29, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    l1 = 0.37
    sae.zero_grad()
    sae.loss(x, l1)["loss"].backward()
    terms, grads, f = loss_and_grads(*[p.detach() for p in sae.parameters()], x, l1)
    for (name, p), g in zip(sae.named_parameters(), grads):
        np.testing.assert_allclose(g.numpy(), p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    assert float(terms["loss"]) == pytest.approx(float(sae.loss(x, l1)["loss"].detach()), rel=1e-12)
    # central differences of the NumPy reference loss at a few coordinates of every parameter
    P = params_np(sae)
    xn = x.numpy()
    rng = np.random.default_rng(5)
    h = 1e-6
    for k, g in enumerate(grads):
        for _ in range(4):
            idx = tuple(rng.integers(0, s) for s in P[k].shape)
            plus = [p.copy() for p in P]
            minus = [p.copy() for p in P]
            plus[k][idx] += h
            minus[k][idx] -= h
            num = (np_loss(*plus, xn, l1)[0] - np_loss(*minus, xn, l1)[0]) / (2 * h)
            assert g.numpy()[idx] == pytest.approx(num, rel=1e-5, abs=1e-7)


def test_init_follows_appendix_a2_and_is_seeded():
    sae = SAE.initialized(D, F, seed=7)
    norms = sae.decoder_norms().detach().double().numpy()
    np.testing.assert_allclose(norms, math.sqrt(D / F), rtol=1e-6)
    assert paper_decoder_norm(D, F) == pytest.approx(math.sqrt(D / F))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert not sae.b_enc.any() and not sae.b_dec.any()
    assert sae.W_dec.dtype == torch.float32
    # uniform entries before normalisation: every row is a rescaled U(-1, 1) vector, so the
    # ratio max|w| / ||w|| sits between the extremes of a Gaussian and a one-hot vector
    w = sae.W_dec.detach().double()
    ratio = w.abs().max(dim=1).values / w.norm(dim=1)
    assert float(ratio.max()) < 0.9 and float(ratio.min()) > 1 / math.sqrt(D)
    assert (w > 0).double().mean().item() == pytest.approx(0.5, abs=0.05)
    same = SAE.initialized(D, F, seed=7)
    other = SAE.initialized(D, F, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(sae.parameters(), same.parameters()))
    assert not torch.equal(sae.W_dec, other.W_dec)
    custom = SAE.initialized(D, F, seed=7, dec_init_norm=0.1)
    np.testing.assert_allclose(custom.decoder_norms().detach().numpy(), 0.1, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    sae = random_sae(9)
    sae.save(tmp_path / "sae", extra_cfg={"model_name": "neox-s0", "layer": 3})
    back = SAE.load(tmp_path / "sae")
    for (n, a), b in zip(sae.named_parameters(), back.parameters()):
        assert torch.equal(a, b), n
    assert back.metadata["model_name"] == "neox-s0" and back.metadata["layer"] == 3
    x = torch.randn(11, D)
    assert torch.equal(sae.encode(x), back.encode(x))
    with pytest.raises(FileNotFoundError):
        SAE.load(tmp_path / "missing")


def test_output_is_in_the_sae_lens_layout(tmp_path):
    """Always checks the documented SAELens 6 layout; also loads through sae_lens when present."""
    sae = random_sae(11)
    shift, scale = torch.linspace(-1, 1, D), 1.7
    sae.fold_input_normalization(shift, scale)
    path = sae.save(tmp_path / "sae", extra_cfg={"hook_name": "blocks.0.hook_resid_post"})
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["dtype"] == "float32"
    assert cfg["d_in"] == D and cfg["d_sae"] == F
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    tensors = load_numpy(str(path / "sae_weights.safetensors"))
    expect = {"W_enc": (D, F), "W_dec": (F, D), "b_enc": (F,), "b_dec": (D,)}
    assert {k: v.shape for k, v in tensors.items()} == expect
    assert all(v.dtype == np.float32 for v in tensors.values())
    # SAELens StandardSAE inference, written out from its documented formulas
    x = np.random.default_rng(12).standard_normal((23, D)).astype(np.float32)
    sae_in = x - tensors["b_dec"] * cfg["apply_b_dec_to_input"]
    f_ref = np.maximum(sae_in @ tensors["W_enc"] + tensors["b_enc"], 0)
    out_ref = f_ref @ tensors["W_dec"] + tensors["b_dec"]
    ours_f = sae.encode(torch.from_numpy(x))
    ours_out = sae.decode(ours_f)
    np.testing.assert_allclose(ours_f.detach().numpy(), f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_out.detach().numpy(), out_ref, rtol=1e-5, atol=1e-5)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from sae_lens import SAE as LensSAE
    except ImportError:
        return  # the layout checks above are the contract; sae_lens itself is optional
    lens = LensSAE.load_from_disk(str(path), device="cpu")
    xt = torch.from_numpy(x)
    with torch.no_grad():
        lf = lens.encode(xt)
        torch.testing.assert_close(lf, ours_f.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lens.decode(lf), ours_out.detach(), rtol=1e-5, atol=1e-5)


def test_fold_input_normalization_keeps_features():
    sae = random_sae(13)
    shift = torch.randn(D, generator=torch.Generator().manual_seed(14))
    scale = 0.37
    x = 3.0 * torch.randn(19, D) + 5.0
    f_norm = sae.encode(scale * (x - shift))
    x_hat_raw = sae.decode(f_norm) / scale + shift
    sae.fold_input_normalization(shift, scale)
    torch.testing.assert_close(sae.encode(x), f_norm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae(x)[0], x_hat_raw, rtol=1e-4, atol=1e-4)


def test_fold_decoder_norms_keeps_reconstruction():
    sae = random_sae(15)
    x = torch.randn(21, D)
    before, f = sae(x)
    n = sae.fold_decoder_norms()
    after, f2 = sae(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f2, f * n, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae.decoder_norms().detach().numpy(), 1.0, rtol=1e-5)


def test_adam_matches_torch_and_state_round_trips():
    g = torch.Generator().manual_seed(16)
    init = [torch.randn(5, 3, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn(5, 3, generator=g), torch.randn(3, generator=g)] for _ in range(6)]
    ours = Adam([p.clone() for p in init], lr=1e-2)
    ref = [torch.nn.Parameter(p.clone()) for p in init]
    ref_opt = torch.optim.Adam(ref, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    for k, gs in enumerate(grads):
        ours.step(gs)
        for p, gr in zip(ref, gs):
            p.grad = gr
        ref_opt.step()
        if k == 2:  # checkpoint: a fresh optimiser with the saved state continues identically
            saved = {k2: v.clone() for k2, v in ours.state_tensors(["a", "b"]).items()}
            fresh = Adam([p.detach().clone() for p in ours.params], lr=1e-2)
            fresh.load_state_tensors(["a", "b"], saved)
            assert fresh.t == 3
    for a, b in zip(ours.params, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    for gs in grads[3:]:
        fresh.step(gs)
    for a, b in zip(ours.params, fresh.params):
        assert torch.equal(a, b)


def test_adam_is_bitwise_torch_fused_adam_and_skips_dynamo():
    g = torch.Generator().manual_seed(17)
    init = [torch.randn(64, 32, generator=g), torch.randn(32, generator=g)]
    ours = Adam([p.clone() for p in init], lr=3e-3, betas=(0.9, 0.99), eps=1e-6)
    ref = [torch.nn.Parameter(p.clone()) for p in init]
    ref_opt = torch.optim.Adam(ref, lr=3e-3, betas=(0.9, 0.99), eps=1e-6, fused=True)
    for k in range(5):
        gs = [torch.randn(64, 32, generator=g), torch.randn(32, generator=g)]
        lr = 3e-3 * (1 - k / 10)  # a schedule, as the trainer's
        ours.step(gs, lr)
        ref_opt.param_groups[0]["lr"] = lr
        for p, gr in zip(ref, gs):
            p.grad = gr
        ref_opt.step()
    for a, b in zip(ours.params, ref):
        assert torch.equal(a.detach(), b.detach())
    # why it exists: a torch.optim optimiser imports torch._dynamo (1.7 s per SAE job)
    code = ("import sys, torch; from universality.sae.optim import Adam; "
            "o = Adam([torch.zeros(3)], lr=1e-3); o.step([torch.ones(3)]); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------- data
def test_holdout_split_is_the_tail():
    assert holdout_split(1000, 0.1) == (900, slice(900, 1000))
    assert holdout_split(1000, eval_rows=37) == (963, slice(963, 1000))
    with pytest.raises(ValueError):
        holdout_split(10, eval_rows=10)


def test_split_rows_prefers_the_store_segments(tmp_path):
    seg = {"segments": {"sae": [0, 800], "eval": [800, 1000]}}
    assert split_rows(1000, seg) == ((0, 800), (800, 1000), "segments")
    assert split_rows(1000, {}, eval_fraction=0.25) == ((0, 750), (750, 1000), "tail")
    assert split_rows(1000, seg, eval_rows=100) == ((0, 900), (900, 1000), "tail")
    assert split_rows(1000, {}, eval_rows=(900, 1000), train_rows=(100, 900)) == ((100, 900), (900, 1000), "explicit")
    with pytest.raises(ValueError, match="overlap"):
        split_rows(1000, {}, eval_rows=(500, 1000), train_rows=(0, 600))
    # the trainer follows the segments: rows outside [0, 800) would poison training with NaN
    data = synthetic(1200)
    data[800:1000] *= 1.5
    data[1000:] = np.nan  # neither segment: must never be read
    path = tmp_path / "seg.zarr"
    store.create_array(path, data.shape, "float32", chunk_rows=100, attrs=seg)[:] = data
    store.seal(path)
    m = train_sae(path, tmp_path / "out", FAST.replace(train_tokens=64 * 30), progress=False)
    assert m["split"] == "segments" and m["eval_rows"] == [800, 1000] and m["train_rows"] == [0, 800]
    assert math.isfinite(m["explained_variance"])


@pytest.mark.parametrize("batch", [7, 64, 200])
def test_shuffle_buffer_covers_each_row_exactly_once_per_epoch(batch):
    n_rows = 1000
    ids = np.tile(np.arange(1100, dtype=np.float32)[:, None], (1, 2))  # 100 extra (eval) rows
    stream = ShuffleBuffer(ids, n_rows, buffer_rows=96, seed=3, block_rows=32)
    it = stream.batches(batch)
    seen = np.concatenate([next(it)[:, 0] for _ in range(-(-int(2.5 * n_rows) // batch))])
    for e in range(2):
        epoch = seen[e * n_rows:(e + 1) * n_rows]
        assert np.array_equal(np.sort(epoch), np.arange(n_rows)), f"epoch {e} is not a permutation"
    assert seen.max() < n_rows  # never the held-out tail
    assert not np.array_equal(seen[:n_rows], seen[n_rows:2 * n_rows])  # reshuffled each epoch
    assert not np.array_equal(seen[:n_rows], np.arange(n_rows))
    # the stream is a pure function of (seed, position): restart anywhere, same continuation
    k = 5
    restarted = ShuffleBuffer(ids, n_rows, buffer_rows=96, seed=3, block_rows=32).batches(batch, start=k * batch)
    assert np.array_equal(next(restarted)[:, 0], seen[k * batch:(k + 1) * batch])
    other = ShuffleBuffer(ids, n_rows, buffer_rows=96, seed=4, block_rows=32).batches(batch)
    assert not np.array_equal(next(other)[:, 0], seen[:batch])


def test_shuffle_buffer_mixes_blocks_within_a_batch():
    ids = np.arange(4096, dtype=np.float32)[:, None]
    stream = ShuffleBuffer(ids, 4096, buffer_rows=1024, seed=0, block_rows=128)
    batch = next(stream.batches(256))[:, 0]
    assert len(np.unique(batch // 128)) >= 6  # rows from many blocks, not one contiguous run


def test_estimate_normalization(tmp_path):
    data = synthetic(2000) * 3.0 + 1.0
    arr = store.open_array(write_array(tmp_path / "a.zarr", data))
    shift, scale = estimate_normalization(arr, 2000, "center_scale", max_rows=10**6)
    np.testing.assert_allclose(shift, data.mean(axis=0), rtol=1e-5, atol=1e-5)
    z = scale * (data - shift)
    assert (z ** 2).sum(axis=1).mean() == pytest.approx(D, rel=1e-4)
    none_shift, s2 = estimate_normalization(arr, 2000, "scale", max_rows=10**6)
    assert none_shift is None and ((s2 * data) ** 2).sum(axis=1).mean() == pytest.approx(D, rel=1e-4)
    assert estimate_normalization(arr, 2000, "none") == (None, 1.0)


# ---------------------------------------------------------------------------- metrics
def test_metric_functions_match_numpy(tmp_path):
    data = synthetic(1500, seed=2)
    path = write_array(tmp_path / "m.zarr", data)
    sae = random_sae(17)
    with torch.no_grad():
        sae.b_enc[:5] = -100.0  # dead on every token
        sae.b_enc[5:9] = 100.0  # dense
    rows = slice(1000, 1500)
    got = evaluate(sae, store.open_array(path), rows, batch_rows=128, dense_threshold=0.1,
                   return_counts=True)
    x = data[1000:1500].astype(np.float64)
    x_hat, f = np_forward(*params_np(sae), x)
    freq = (f > 0).mean(axis=0)
    assert got["n_tokens"] == 500
    assert got["explained_variance"] == pytest.approx(explained_variance(x, x_hat), rel=1e-6)
    assert got["explained_variance"] == pytest.approx(
        1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-6)
    assert got["mse"] == pytest.approx(((x - x_hat) ** 2).mean(), rel=1e-5)
    assert got["mse_per_token"] == pytest.approx(((x - x_hat) ** 2).sum(1).mean(), rel=1e-5)
    assert got["mean_l0"] == pytest.approx((f > 0).sum(1).mean(), rel=1e-9)
    assert got["dead_fraction"] == pytest.approx((freq == 0).mean()) and got["n_dead"] >= 5
    assert got["dense_fraction"] == pytest.approx((freq > 0.1).mean()) and got["n_dense"] >= 4
    assert np.array_equal(got["feature_counts"], (f > 0).sum(0))
    assert got["mean_sparsity"] == pytest.approx((f * np.linalg.norm(params_np(sae)[2], axis=1)).sum(1).mean(), rel=1e-5)
    assert evaluate(sae, store.open_array(path), (1000, 1500))["mean_l0"] == got["mean_l0"]


def test_ce_loss_recovered():
    assert ce_loss_recovered(3.0, 3.0, 7.0) == 1.0
    assert ce_loss_recovered(3.0, 7.0, 7.0) == 0.0
    assert ce_loss_recovered(3.0, 4.0, 7.0) == pytest.approx(0.75)
    assert math.isnan(ce_loss_recovered(3.0, 4.0, 3.0))


# ---------------------------------------------------------------------------- trainer
def test_train_writes_complete_outputs(acts, tmp_path):
    out = tmp_path / "seed0"
    m = train_sae(acts, out, FAST, label="neox-s0/resid/L0/seed0", metadata={"model": "neox-s0", "layer": 0},
                  progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "cfg.json", "metrics.json", "sae_weights.safetensors", "train_log.jsonl"]
    assert not (tmp_path / "seed0.ckpt").exists()
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("explained_variance", "mse", "mean_l0", "dead_fraction", "dense_fraction", "n_tokens"):
        assert key in saved and saved[key] == pytest.approx(m[key])
    assert saved["eval_rows"] == [2700, 3000] and saved["train_rows"] == [0, 2700]
    assert m["explained_variance"] > 0.5 and 0 < m["mean_l0"] < F
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 41, 5))
    assert {"loss", "l0", "explained_variance", "mse", "lr", "l1", "tokens"} <= set(log[0])
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["d_sae"] == 4 * D and cfg["metadata"]["model"] == "neox-s0"
    assert cfg["metadata"]["input_normalization"]["folded"] is True
    # the saved (folded) SAE reproduces the metrics on raw activations
    again = evaluate(SAE.load(out), store.open_array(acts), slice(2700, 3000))
    assert again["explained_variance"] == pytest.approx(m["explained_variance"], rel=1e-6)


def test_same_config_and_seed_give_identical_weights(acts, tmp_path):
    a = weights(train_sae(acts, tmp_path / "a", FAST, progress=False) and tmp_path / "a")
    b = weights(train_sae(acts, tmp_path / "b", FAST, progress=False) and tmp_path / "b")
    c = weights(train_sae(acts, tmp_path / "c", FAST, seed=1, progress=False) and tmp_path / "c")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W_dec"], c["W_dec"])


class _Kill(Exception):
    """Stands in for a killed job: raised from the per-step hook."""


def kill_after(k):
    def hook(step):
        if step == k:
            raise _Kill
    return hook


def test_interrupted_run_resumes_bit_identical(acts, tmp_path):
    cfg = FAST.replace(checkpoint_every=6, train_tokens=64 * 33, lr_decay=0.2)
    train_sae(acts, tmp_path / "full", cfg, progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(_Kill):
        train_sae(acts, out, cfg, on_step=kill_after(15), progress=False)  # dies 3 steps after the step-12 ckpt
    assert not out.exists()
    ckpts = sorted(p.name for p in (tmp_path / "resumed.ckpt").glob("step_*"))
    assert ckpts == ["step_000000012"]
    with pytest.raises(_Kill):
        train_sae(acts, out, cfg, on_step=kill_after(20), progress=False)  # a second kill, after resuming
    m = train_sae(acts, out, cfg, progress=False)
    assert m["training"]["resumed_from_step"] == 18
    full, resumed = weights(tmp_path / "full"), weights(out)
    assert all(np.array_equal(full[k], resumed[k]) for k in full)
    assert (tmp_path / "full" / "train_log.jsonl").read_text().count("\n") == \
        (out / "train_log.jsonl").read_text().count("\n")
    assert not (tmp_path / "resumed.ckpt").exists()


def test_checkpoint_of_another_config_is_discarded(acts, tmp_path):
    cfg = FAST.replace(checkpoint_every=5)
    with pytest.raises(_Kill):
        train_sae(acts, tmp_path / "x", cfg, on_step=kill_after(7), progress=False)
    assert (tmp_path / "x.ckpt" / "step_000000005").exists()
    m = train_sae(acts, tmp_path / "x", cfg.replace(l1=0.6), progress=False)
    assert m["training"]["resumed_from_step"] == 0


def test_nan_stops_training_with_label_and_step(tmp_path):
    data = synthetic(600)
    data[123] = np.nan
    path = write_array(tmp_path / "nan.zarr", data, chunk_rows=64)
    with pytest.raises(SAETrainingError, match=r"'pythia/L3/seed1'.*non-finite loss.*at step \d+"):
        train_sae(path, tmp_path / "out", FAST.replace(normalize="none", train_tokens=64 * 20),
                  label="pythia/L3/seed1", progress=False)
    assert not (tmp_path / "out").exists()


def test_diverging_weights_stop_training(acts, tmp_path):
    with pytest.raises(SAETrainingError, match=r"'boom'.*non-finite.*at step \d+"):
        train_sae(acts, tmp_path / "out", FAST.replace(lr=1e38, l1=1e38), label="boom", progress=False)


def test_sigkilled_process_resumes_bit_identical(acts, tmp_path):
    """A real SIGKILL (no exception handlers run) in a child process, then resume here."""
    import os
    import subprocess
    import sys

    cfg = FAST.replace(checkpoint_every=4, train_tokens=64 * 14)
    out = tmp_path / "killed"
    code = (
        "import os, signal, sys\n"
        "from universality.sae.config import SAETrainConfig\n"
        "from universality.sae.train import train_sae\n"
        "def hook(step):\n"
        "    if step == 10: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"train_sae({str(acts)!r}, {str(out)!r}, {cfg!r}, on_step=hook, progress=False)\n"
    )
    import universality
    root = os.path.dirname(os.path.dirname(os.path.abspath(universality.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    assert [p.name for p in (tmp_path / "killed.ckpt").glob("step_*")] == ["step_000000008"]
    m = train_sae(acts, out, cfg, progress=False)
    assert m["training"]["resumed_from_step"] == 8
    train_sae(acts, tmp_path / "clean", cfg, progress=False)
    a, b = weights(out), weights(tmp_path / "clean")
    assert all(np.array_equal(a[k], b[k]) for k in a)
