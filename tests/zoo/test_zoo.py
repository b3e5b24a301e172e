import math

import numpy as np
import pytest
import torch

from universality.models import registry as models
from universality.zoo import train as zoo

from tests.fakes import FakeTokens


def test_synthetic_repeats_labels_match_reference():
    rng = np.random.default_rng(0)
    ids, labels = zoo.synthetic_repeats(rng, 20, 40, 50, bos=0)
    for r in range(20):
        assert ids[r, 0] == 0
        body = ids[r, 1:]
        period = next(p for p in range(8, 40) if np.array_equal(body[p:], body[: len(body) - p]))
        for p in range(40):
            predictable = p >= period + 1 and p < 39  # token p+1 repeats token p+1-period, not the first of a copy
            want = ids[r, p + 1] if predictable else zoo.IGNORE
            assert labels[r, p] == want


def test_lr_schedule():
    assert zoo.lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert zoo.lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert zoo.lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_phase_schedule_restarts_for_the_text_phase():
    # warm-up phase: linear warm-up, then constant
    assert zoo.phase_lr(0, 50, 100, 1.0, 10) == pytest.approx(0.1)
    assert zoo.phase_lr(49, 50, 100, 1.0, 10) == pytest.approx(1.0)
    # text phase: its own warm-up and a full cosine over its own steps
    assert zoo.phase_lr(50, 50, 100, 1.0, 10) == pytest.approx(0.1)
    assert zoo.phase_lr(60, 50, 100, 1.0, 10) == pytest.approx(1.0)
    assert zoo.phase_lr(150, 50, 100, 1.0, 10) == pytest.approx(0.1)
    assert zoo.phase_lr(105, 0, 100, 1.0, 10) == zoo.lr_at(105, 100, 1.0, 10)  # no warm-up phase


class Copier(torch.nn.Module):
    """Predicts token t-period with certainty: a perfect induction model for [BOS] R R."""

    def __init__(self, vocab, period):
        super().__init__()
        self.vocab, self.period = vocab, period

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab)
        for p in range(ids.shape[1]):
            if p + 1 - self.period >= 1:
                logits[:, p].scatter_(1, ids[:, p + 1 - self.period, None], 30.0)
        return logits


def test_induction_losses_on_a_perfect_copier():
    out = zoo.induction_losses(Copier(50, 16), 50, bos=0, length=16, prompts=4)
    assert out["second_copy"] < 1e-6
    assert out["first_copy"] == pytest.approx(math.log(50), abs=0.01)


@pytest.mark.parametrize("arch", ["gpt_neox", "mamba", "rwkv"])
def test_training_is_deterministic_and_learns(arch):
    spec = {"arch": arch, "seed": 3, "d_model": 16, "n_layers": 2, "n_heads": 2, "d_state": 4,
            "expand": 2, "d_conv": 4, "train_tokens": 4 * 32 * 40}
    training = {"batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.0, "induction_rows": 4, "induction_len": 32, "induction_warmup_steps": 3}
    tokens = FakeTokens(20, 32, 40, counting=True)
    m1, h1 = zoo.train(spec, training, tokens, 32, 40)
    m2, h2 = zoo.train(spec, training, tokens, 32, 40)
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    untimed = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in h]
    assert untimed(h1) == untimed(h2)
    assert h1[0]["loss_text"] is None and h1[-1]["loss_text"] is not None  # warm-up: synthetic rows only
    text = [r["loss_text"] for r in h1 if r["loss_text"] is not None]
    assert text[-1] < text[0]
    loss = zoo.eval_loss(m1, tokens, 32, 200)
    assert math.isfinite(loss)
    spec["seed"] = 4
    m3, _ = zoo.train(spec, training, tokens, 32, 40)
    assert not torch.equal(next(iter(m3.state_dict().values())), next(iter(m1.state_dict().values())))


def test_eval_loss_matches_reference():
    torch.manual_seed(0)
    cfg = models.build_config({"arch": "gpt_neox", "d_model": 16, "n_layers": 1, "n_heads": 2}, 40, 32, 0)
    model = models.build_model(cfg).eval()
    tokens = FakeTokens(3, 32, 40, seed=1)
    # reference: per-window full forward, mean over every next-token prediction
    nll = []
    for w in range(3):
        ids = torch.from_numpy(tokens.window(w)).long()[None]
        logp = torch.log_softmax(models.logits_of(model, ids)[0, :-1].double(), -1)
        nll += (-logp.gather(1, ids[0, 1:, None])[:, 0]).tolist()
    assert zoo.eval_loss(model, tokens, 32, 10_000, batch=2) == pytest.approx(np.mean(nll), rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt_neox", "mamba", "rwkv"])
def test_eval_loss_windows_and_resid_patch(arch):
    torch.manual_seed(0)
    spec = {"arch": arch, "d_model": 16, "n_layers": 2, "n_heads": 2, "d_state": 4, "expand": 2, "d_conv": 4}
    model = models.build_model(models.build_config(spec, 40, 32, 0)).eval()
    tokens = FakeTokens(5, 32, 40, seed=2)
    # the first 3 windows, whatever the batch size: 3 x 31 scored tokens
    assert zoo.eval_loss(model, tokens, 32, batch=2, max_windows=3) == pytest.approx(
        zoo.eval_loss(model, tokens, 32, max_tokens=93, batch=3), rel=1e-6)
    clean = zoo.eval_loss(model, tokens, 32, max_windows=5)
    with models.patch_resid(model, 0, lambda t: t):
        assert zoo.eval_loss(model, tokens, 32, max_windows=5) == pytest.approx(clean, rel=1e-6)
    with models.patch_resid(model, 0, torch.zeros_like):
        assert zoo.eval_loss(model, tokens, 32, max_windows=5) != pytest.approx(clean, rel=1e-3)
    assert zoo.eval_loss(model, tokens, 32, max_windows=5) == clean  # the patch is gone


def test_warmup_rows_and_length_of_a_models_own_recipe(monkeypatch):
    calls = []
    real = zoo.synthetic_repeats

    def spy(rng, n, max_len, vocab, bos):
        calls.append((n, max_len))
        return real(rng, n, max_len, vocab, bos)

    monkeypatch.setattr(zoo, "synthetic_repeats", spy)
    spec = {"arch": "gpt_neox", "seed": 0, "d_model": 16, "n_layers": 1, "n_heads": 2,
            "train_tokens": 2 * 4 * 32}
    training = {"batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0,
                "induction_rows": 3, "induction_len": 32, "induction_warmup_steps": 2,
                "induction_warmup_len": 16, "induction_warmup_rows": 5}
    zoo.train(spec, training, FakeTokens(10, 32, 40), 32, 40)
    assert calls == [(5, 16), (5, 16), (3, 32), (3, 32)]  # 2 warm-up steps, then 2 text steps
    calls.clear()
    zoo.train(spec, {**training, "induction_warmup_len": None, "induction_warmup_rows": None},
              FakeTokens(10, 32, 40), 32, 40)
    assert calls == [(3, 32)] * 4  # defaults: the text phase's rows and length


def test_warmup_text_rows(monkeypatch):
    drawn = []
    real = zoo.natural_rows

    def spy(tokens, rows, max_len):
        drawn.append(len(rows))
        return real(tokens, rows, max_len)

    monkeypatch.setattr(zoo, "natural_rows", spy)
    spec = {"arch": "gpt_neox", "seed": 0, "d_model": 16, "n_layers": 1, "n_heads": 2,
            "train_tokens": 2 * 4 * 32}
    training = {"batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0,
                "induction_rows": 3, "induction_len": 32, "induction_warmup_steps": 3}
    _, hist = zoo.train(spec, {**training, "induction_warmup_text_rows": 2}, FakeTokens(10, 32, 40), 32, 40)
    assert drawn == [2, 2, 2, 4, 4]  # 3 warm-up steps with 2 windows, then 2 text steps
    assert hist[0]["loss_text"] is not None and hist[0]["tokens"] == 3 * 32 + 2 * 32
    drawn.clear()
    _, hist = zoo.train(spec, training, FakeTokens(10, 32, 40), 32, 40)
    assert drawn == [4, 4] and hist[0]["loss_text"] is None  # default: synthetic rows only


def test_zero_train_tokens_returns_the_initialisation():
    """The random-initialisation control: ``train_tokens: 0`` takes no step, so the model is the
    seed's initialisation (the same weights a trained model of that seed starts from)."""
    spec = {"arch": "gpt_neox", "seed": 5, "d_model": 16, "n_layers": 2, "n_heads": 2, "train_tokens": 0}
    training = {"batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.0, "induction_rows": 4,
                "induction_len": 32, "induction_warmup_steps": 3}
    tokens = FakeTokens(20, 32, 40)
    model, history = zoo.train(spec, training, tokens, 32, 40)
    torch.manual_seed(5)
    init = models.build_model(models.build_config(spec, 40, 32, tokens.bos_id))
    assert history == []
    for (n, a), (_, b) in zip(model.state_dict().items(), init.state_dict().items()):
        assert torch.equal(a, b), n
    assert math.isfinite(zoo.eval_loss(model, tokens, 32, 200))
