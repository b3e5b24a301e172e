"""The paper's path-patching definitions (App. G-H) against slow, obviously correct references:
a float64 Mamba written as a per-position loop, states frozen / replaced by hand."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import MambaConfig, MambaForCausalLM

from universality.circuits import bootstrap, ssm_paths
from universality.circuits.effects import Effects
from universality.circuits.induction import POSITIONS, Prompts, induction_prompts
from universality.circuits.patching import final_logits, final_state_logits, path_patch, ssm_states
from universality.models.mamba import MambaLM

VOCAB, BOS = 120, 0


@pytest.fixture(scope="module")
def mamba():
    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, state_size=8, expand=2, conv_kernel=4)
    model = MambaLM.from_hf(MambaForCausalLM(cfg)).eval()
    with torch.no_grad():     # larger effects than at initialisation (see test_circuits.py)
        for block in model.backbone.layers:
            block.mixer.dt_proj.bias.fill_(-1.0)
            block.mixer.out_proj.weight.mul_(8)
            block.mixer.x_proj.weight.mul_(4)
    return model


# ----------------------------------------------------------------------- the float64 reference
class Ref:
    """MambaLM's weights in float64, the forward as plain loops over positions.

    ``run(ids, override)``: ``override(layer, t, h)`` returns the state to use at (layer, t)
    (the recurrence continues from it) or None to keep the computed one.
    """

    def __init__(self, model):
        self.W = {k: v.detach().double() for k, v in model.state_dict().items()}
        self.L, self.eps = model.n_layers, model.config.layer_norm_epsilon

    def _norm(self, x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps) * w

    def ssm_params(self, l, u):
        """delta, B, C from c (= u) [..., d] through x_proj and dt_proj."""
        p = f"backbone.layers.{l}.mixer."
        r = self.W[p + "dt_proj.weight"].shape[1]
        n = self.W[p + "A_log"].shape[1]
        dbc = u @ self.W[p + "x_proj.weight"].T
        dt, B, C = dbc[..., :r], dbc[..., r:r + n], dbc[..., r + n:]
        return F.softplus(dt @ self.W[p + "dt_proj.weight"].T + self.W[p + "dt_proj.bias"]), B, C

    def conv_at(self, l, x, t):
        """SiLU(causal conv) at position t of x [b, T, d]."""
        w, b = self.W[f"backbone.layers.{l}.mixer.conv1d.weight"], self.W[f"backbone.layers.{l}.mixer.conv1d.bias"]
        K = w.shape[-1]
        pre = b.expand(x.shape[0], -1).clone()
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                pre = pre + w[:, 0, k] * x[:, s]
        return F.silu(pre)

    def scan_last(self, l, u, delta, B):
        """h at the last position from u, delta [b, T, d], B [b, T, n], loop over positions."""
        A = -torch.exp(self.W[f"backbone.layers.{l}.mixer.A_log"])
        h = torch.zeros(u.shape[0], *A.shape, dtype=torch.float64)
        for t in range(u.shape[1]):
            h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        return h

    def run(self, ids, override=None):
        W = self.W
        resid = W["backbone.embeddings.weight"][ids]
        rec = []
        for l in range(self.L):
            p = f"backbone.layers.{l}.mixer."
            hid = self._norm(resid, W[f"backbone.layers.{l}.norm.weight"])
            x, z = (hid @ W[p + "in_proj.weight"].T).chunk(2, -1)
            T = ids.shape[1]
            u = torch.stack([self.conv_at(l, x, t) for t in range(T)], 1)
            delta, B, C = self.ssm_params(l, u)
            A = -torch.exp(W[p + "A_log"])
            h = torch.zeros(ids.shape[0], *A.shape, dtype=torch.float64)
            hs, ys = [], []
            for t in range(T):
                h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
                if override is not None:
                    o = override(l, t, h)
                    h = h if o is None else o
                hs.append(h)
                ys.append((h * C[:, t, None, :]).sum(-1) + W[p + "D"] * u[:, t])
            y = torch.stack(ys, 1)
            resid = resid + (y * F.silu(z)) @ W[p + "out_proj.weight"].T
            rec.append({"x": x, "u": u, "delta": delta, "B": B, "h": torch.stack(hs, 1)})
        out = self._norm(resid, W["backbone.norm_f.weight"]) @ W["lm_head.weight"].T
        return out[:, -1], rec

    def last_state_patch(self, ids, clean_rec, layer, h_last):
        """Logits when layer's state at the last position is h_last and every other state of
        every layer is frozen to the clean run's."""
        T = ids.shape[1]

        def override(l, t, h):
            if l == layer and t == T - 1:
                return h_last
            return clean_rec[l]["h"][:, t]
        return self.run(ids, override)[0]


def _b_logit(logits, answer):
    return logits.gather(1, answer[:, None])[:, 0].double()


@pytest.fixture(scope="module")
def setting(mamba):
    p = induction_prompts(5, 9, VOCAB, BOS, seed=1)
    effects = ssm_paths.mamba_experiments(mamba, [p], batch_size=5, effects=Effects(50), key=1)
    return p, effects, Ref(mamba)


@pytest.mark.parametrize("corr", ["B'", "A'"])
def test_last_position_state_patch_equals_the_float64_loop(mamba, setting, corr):
    p, effects, ref = setting
    _, clean = ref.run(p.clean)
    _, bad = ref.run(p.corrupt[corr])
    moved = 0
    for layer in range(mamba.n_layers):
        want = _b_logit(ref.last_state_patch(p.clean, clean, layer, bad[layer]["h"][:, -1]), p.answer)
        clean_logit, _, got = effects.values("state", {"distance": 9, "layer": layer, "corruption": corr})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
        moved += np.abs(want.numpy() - clean_logit).max() > 1e-3
    assert moved >= 1


@pytest.mark.parametrize("corr", ["B'", "A'"])
def test_restricted_c_patch_equals_the_float64_loop(mamba, setting, corr):
    """c at one position enters h (as u, and through delta and B computed from it) and nothing else."""
    p, effects, ref = setting
    _, clean = ref.run(p.clean)
    _, bad = ref.run(p.corrupt[corr])
    moved = 0
    for layer in range(mamba.n_layers):
        c = clean[layer]
        for label, off in POSITIONS.items():
            pos = p.a1 + off
            u, delta, B = c["u"].clone(), c["delta"].clone(), c["B"].clone()
            u[:, pos] = bad[layer]["u"][:, pos]
            d_, B_, _ = ref.ssm_params(layer, u[:, pos])
            delta[:, pos], B[:, pos] = d_, B_
            h_last = ref.scan_last(layer, u, delta, B)
            want = _b_logit(ref.last_state_patch(p.clean, clean, layer, h_last), p.answer).numpy()
            key = {"distance": 9, "layer": layer, "position": label, "corruption": corr}
            clean_logit, _, got = effects.values("ssm_in", key)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            moved += np.abs(want - clean_logit).max() > 1e-3
    assert moved >= 3       # not vacuous: the patch moves B's logit somewhere


@pytest.mark.parametrize("corr", ["B'", "A'"])
def test_restricted_x_patch_into_c_at_b1_plus_1_equals_the_float64_loop(setting, corr):
    p, effects, ref = setting
    _, clean = ref.run(p.clean)
    _, bad = ref.run(p.corrupt[corr])
    key, r = 1, p.a1 + POSITIONS["B1+1"]
    c = clean[key]
    for label in ssm_paths.CONV_POSITIONS:
        pos = p.a1 + POSITIONS[label]
        x = c["x"].clone()
        x[:, pos] = bad[key]["x"][:, pos]
        u, delta, B = c["u"].clone(), c["delta"].clone(), c["B"].clone()
        u[:, r] = ref.conv_at(key, x, r)            # only c at B1+1 sees the patched x
        delta[:, r], B[:, r], _ = ref.ssm_params(key, u[:, r])
        want = _b_logit(ref.last_state_patch(p.clean, clean, key, ref.scan_last(key, u, delta, B)), p.answer)
        got = effects.values("conv_in", {"distance": 9, "layer": key, "position": label, "corruption": corr})[2]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------- identities
def test_clean_into_clean_changes_nothing_in_every_table(mamba):
    p = induction_prompts(4, 8, VOCAB, BOS, seed=2)
    same = Prompts(p.distance, p.clean, {k: p.clean.clone() for k in p.corrupt}, p.answer, p.a1)
    tables = ssm_paths.mamba_experiments(mamba, [same], batch_size=4, key=2).tables()
    assert set(tables) == set(ssm_paths.EXACT + ssm_paths.BROADER)
    for name, t in tables.items():
        assert len(t) and (t.logit_diff.abs() < 1e-5).all(), name
        assert (t.corrupt_logit_diff == 0).all()


def test_corrupted_inputs_everywhere_give_the_corrupted_state(mamba):
    """restricted_last_state with the corrupted scan inputs at EVERY position is the corrupted
    run's last state; and that state in the last layer (nothing after it) is the corrupted run."""
    from universality.circuits.patching import SCAN_INPUTS

    p = induction_prompts(3, 10, VOCAB, BOS, seed=3)
    names = [f"blocks.{l}.mixer.{n}" for l in range(mamba.n_layers) for n in SCAN_INPUTS]
    _, clean = final_logits(mamba, p.clean, names)
    _, bad = final_logits(mamba, p.corrupt["B'"], names)
    for layer in range(mamba.n_layers):
        pre = f"blocks.{layer}.mixer."
        scan = {n: clean[pre + n] for n in ("hook_ssm_in", "hook_delta", "hook_B")}
        changes = {t: tuple(bad[pre + n][:, t] for n in ("hook_ssm_in", "hook_delta", "hook_B"))
                   for t in range(p.clean.shape[1])}
        h = ssm_paths.restricted_last_state(mamba, layer, scan, ssm_states(mamba, clean, layer), changes)
        torch.testing.assert_close(h, ssm_states(mamba, bad, layer)[:, -1], rtol=1e-4, atol=1e-5)


def test_windowed_last_state_run_equals_the_full_third_pass(mamba):
    p = induction_prompts(3, 12, VOCAB, BOS, seed=4)
    L = mamba.n_layers
    resid = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    from universality.circuits.patching import SCAN_INPUTS
    names = [f"blocks.{l}.mixer.{n}" for l in range(L) for n in SCAN_INPUTS]
    lc, cache = final_logits(mamba, p.clean, names + resid)
    _, bad = final_logits(mamba, p.corrupt["A'"], names)
    states = {l: ssm_states(mamba, cache, l) for l in range(L)}
    for layer in range(L):
        torch.testing.assert_close(final_state_logits(mamba, cache, states, layer, states[layer][:, -1]), lc,
                                   rtol=1e-5, atol=1e-5)
        h = states[layer].clone()
        h[:, -1] = ssm_states(mamba, bad, layer)[:, -1]
        full = path_patch(mamba, p.clean, states={layer: h, **{m: states[m] for m in range(layer + 1, L)}},
                          start=layer, resid=cache[resid[layer]])
        got = final_state_logits(mamba, cache, states, layer, h[:, -1])
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
        assert (got - lc).abs().max() > 1e-4


# ----------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_and_win_share_against_a_loop():
    rng = np.random.default_rng(0)
    v = rng.normal(size=40)
    idx = bootstrap.indices(40, 300, seed=5, key=8)
    assert idx.shape == (300, 40) and np.array_equal(idx, bootstrap.indices(40, 300, 5, 8))
    means = np.array([v[i].mean() for i in idx])
    np.testing.assert_allclose(bootstrap.resampled_means(v, idx), means)
    lo, hi = bootstrap.interval(means, 0.9)
    assert lo == pytest.approx(np.quantile(means, 0.05)) and hi == pytest.approx(np.quantile(means, 0.95))
    stats = np.array([[0.0, 1.0, -1.0], [1.0, 0.0, 2.0], [-1.0, -2.0, 0.0]])
    np.testing.assert_allclose(bootstrap.win_share(stats), [1 / 3, 0.0, 2 / 3])


def test_effects_rows_and_wins_planted():
    """Layer 1 lowers the logit by 1 in every prompt, layer 0 by 0.1 +- noise: layer 1 wins every resample."""
    e = Effects(200, 0.95, seed=1)
    rng = np.random.default_rng(1)
    for d in (8, 16):
        clean = torch.from_numpy(rng.normal(size=30))
        for layer, shift in ((0, -0.1), (1, -1.0)):
            patched = clean + shift + torch.from_numpy(0.05 * rng.normal(size=30))
            e.add("state", {"distance": d, "layer": layer, "corruption": "B'"}, clean, clean - 2, patched)
    t = e.table("state")
    assert len(t) == 4 and (t.ci_low <= t.logit_diff).all() and (t.logit_diff <= t.ci_high).all()
    assert (t.corrupt_logit_diff == -2).all() and np.allclose(t[t.layer == 1].fraction, 0.5, atol=0.05)
    w = e.wins("state", "layer")
    assert w["winner"] == 1 and w["share"]["1"] == 1.0 and w["ci"]["1"][0] < -0.9
