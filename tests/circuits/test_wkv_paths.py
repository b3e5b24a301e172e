"""RWKV induction tables (circuits.wkv_paths) against a float64 per-position RWKV-4 loop."""
import pytest
import torch
from transformers import RwkvConfig

from universality.circuits import wkv_paths
from universality.circuits.effects import Effects
from universality.circuits.induction import A_, B_, POSITIONS, induction_prompts
from universality.models.rwkv import RwkvLM

VOCAB, BOS = 120, 0


def _model(layers: int, seed: int = 0) -> RwkvLM:
    torch.manual_seed(seed)
    cfg = RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=max(layers, 2), attention_hidden_size=32,
                     intermediate_size=64, context_length=64, rescale_every=0)
    model = RwkvLM.fresh(cfg).eval()
    if layers == 1:           # transformers' initialisation divides by n_layers - 1: keep block 0
        cfg.num_hidden_layers = 1
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("rwkv.blocks.1.")}
        model = RwkvLM(cfg).eval()
        model.load_hf_state_dict(state)
    with torch.no_grad():    # away from the initialisation's symmetric values, with larger effects
        for block in model.rwkv.blocks:
            att = block.attention
            att.time_decay.add_(torch.randn_like(att.time_decay))
            att.time_first.add_(torch.randn_like(att.time_first))
            for p in (att.time_mix_key, att.time_mix_value, att.time_mix_receptance):
                p.copy_(torch.rand_like(p))
            att.key.weight.mul_(6)
            att.value.weight.mul_(6)
            att.output.weight.mul_(6)
    return model


@pytest.fixture(scope="module")
def rwkv():
    return _model(2)


# ----------------------------------------------------------------------- the float64 reference
class Ref:
    """RwkvLM's weights in float64; the WKV as its defining sums, one position at a time, with the
    real (not max-normalised) numerator N_t = sum_{i<=t} e^{(t-i) w + k_i} v_i and denominator D_t.

    ``run(ids, read)``: ``read[l](rec)`` gives layer l's (N, D) [b, C] that the LAST position
    reads (the state after T-2), from ``rec`` {"k", "v", "N", "D"} of that layer in this run;
    every other position reads the state this run computes.
    """

    def __init__(self, model):
        self.W = {k: v.detach().double() for k, v in model.state_dict().items()}
        self.L, self.eps = model.n_layers, model.config.layer_norm_epsilon

    def _ln(self, x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.W[name + ".weight"] + self.W[name + ".bias"]

    @staticmethod
    def _shift(x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)

    def states(self, l, k, v):
        """Real (N, D) after every position [b, T, C], from k, v [b, T, C]."""
        w = -torch.exp(self.W[f"rwkv.blocks.{l}.attention.time_decay"])
        N, D, Ns, Ds = 0 * k[:, 0], 0 * k[:, 0], [], []
        for t in range(k.shape[1]):
            N, D = torch.exp(w) * N + torch.exp(k[:, t]) * v[:, t], torch.exp(w) * D + torch.exp(k[:, t])
            Ns.append(N)
            Ds.append(D)
        return torch.stack(Ns, 1), torch.stack(Ds, 1)

    def run(self, ids, read=None):
        W, read, rec = self.W, read or {}, []
        resid = W["rwkv.embeddings.weight"][ids]
        T = ids.shape[1]
        for l in range(self.L):
            p = f"rwkv.blocks.{l}."
            if l == 0:
                resid = self._ln(resid, p + "pre_ln")
            x = self._ln(resid, p + "ln1")
            s = self._shift(x)
            mix = {n: x * W[p + f"attention.time_mix_{n}"] + s * (1 - W[p + f"attention.time_mix_{n}"])
                   for n in ("key", "value", "receptance")}
            k, v = mix["key"] @ W[p + "attention.key.weight"].T, mix["value"] @ W[p + "attention.value.weight"].T
            r = torch.sigmoid(mix["receptance"] @ W[p + "attention.receptance.weight"].T)
            N, D = self.states(l, k, v)
            r_ = {"k": k, "v": v, "N": N, "D": D}
            u = W[p + "attention.time_first"]
            ys = []
            for t in range(T):
                if t == 0:
                    prev = (0 * k[:, 0], 0 * k[:, 0])
                elif t == T - 1 and l in read:
                    prev = read[l](r_)
                else:
                    prev = (N[:, t - 1], D[:, t - 1])
                bonus = torch.exp(u + k[:, t])
                ys.append((prev[0] + bonus * v[:, t]) / (prev[1] + bonus))
            resid = resid + (r * torch.stack(ys, 1)) @ W[p + "attention.output.weight"].T
            x = self._ln(resid, p + "ln2")
            s = self._shift(x)
            xk = x * W[p + "feed_forward.time_mix_key"] + s * (1 - W[p + "feed_forward.time_mix_key"])
            xr = x * W[p + "feed_forward.time_mix_receptance"] + s * (1 - W[p + "feed_forward.time_mix_receptance"])
            key = torch.relu(xk @ W[p + "feed_forward.key.weight"].T) ** 2
            resid = resid + torch.sigmoid(xr @ W[p + "feed_forward.receptance.weight"].T) * (
                key @ W[p + "feed_forward.value.weight"].T)
            rec.append(r_)
        return (self._ln(resid, "rwkv.ln_out") @ W["head.weight"].T)[:, -1], rec


def _b(logits, answer):
    return logits.gather(1, answer[:, None])[:, 0]


def _frozen(clean_rec, layer, n):
    """Reads of the layers after ``layer``: their clean states (frozen)."""
    return {m: (lambda _r, m=m: (clean_rec[m]["N"][:, -2], clean_rec[m]["D"][:, -2])) for m in range(layer + 1, n)}


def _kv_read(ref, l, bad, pos, parts):
    """The read state of layer l when k / v at pos take the corrupted values, into the state only."""
    def read(r):
        k, v = r["k"].clone(), r["v"].clone()
        if "k" in parts:
            k[:, pos] = bad["k"][:, pos]
        if "v" in parts:
            v[:, pos] = bad["v"][:, pos]
        N, D = ref.states(l, k, v)
        return N[:, -2], D[:, -2]
    return read


@pytest.fixture(scope="module")
def setting(rwkv):
    p = induction_prompts(5, 9, VOCAB, BOS, seed=1)
    effects = wkv_paths.rwkv_experiments(rwkv, [p], batch_size=5, effects=Effects(50))
    return p, effects, Ref(rwkv)


def _rows(effects, table, **where):
    t = effects.table(table)
    for c, v in where.items():
        t = t[t[c] == v]
    assert len(t) == 1, where
    return t.iloc[0]


@pytest.mark.parametrize("corr", [B_, A_])
def test_last_position_state_patch_equals_the_float64_loop(setting, corr):
    p, effects, ref = setting
    clean, crec = ref.run(p.clean)
    _, brec = ref.run(p.corrupt[corr])
    base = _b(clean, p.answer)
    seen = []
    for layer in range(ref.L):
        read = {layer: lambda _r, layer=layer: (brec[layer]["N"][:, -2], brec[layer]["D"][:, -2]),
                **_frozen(crec, layer, ref.L)}
        want = float((_b(ref.run(p.clean, read)[0], p.answer) - base).mean())
        row = _rows(effects, "state", layer=layer, corruption=corr)
        assert row.logit_diff == pytest.approx(want, abs=1e-5)
        seen.append(abs(want))
    assert max(seen) > 1e-3           # the patch does something (100x the tolerance)


@pytest.mark.parametrize("corr", [B_, A_])
def test_kv_patch_into_the_state_equals_the_float64_loop(setting, corr):
    p, effects, ref = setting
    clean, crec = ref.run(p.clean)
    _, brec = ref.run(p.corrupt[corr])
    base = _b(clean, p.answer)
    seen = []
    for layer in range(ref.L):
        for label, off in POSITIONS.items():
            for part in wkv_paths.KV_PARTS:
                read = {layer: _kv_read(ref, layer, brec[layer], p.a1 + off, part), **_frozen(crec, layer, ref.L)}
                want = float((_b(ref.run(p.clean, read)[0], p.answer) - base).mean())
                row = _rows(effects, "kv_in", layer=layer, position=label, patched=part, corruption=corr)
                assert row.logit_diff == pytest.approx(want, abs=1e-5), (layer, label, part)
                seen.append(abs(want))
    assert max(seen) > 1e-3


def test_clean_into_clean_changes_nothing(rwkv):
    p = induction_prompts(4, 8, VOCAB, BOS, seed=2)
    p.corrupt = {c: p.clean.clone() for c in p.corrupt}
    effects = wkv_paths.rwkv_experiments(rwkv, [p], batch_size=4, effects=Effects(0))
    for name in wkv_paths.table_names(True):
        t = effects.table(name)
        assert len(t) and t.logit_diff.abs().max() < 1e-6 and t.corrupt_logit_diff.abs().max() == 0


@pytest.mark.parametrize("corr", [B_, A_])
def test_one_layer_model_corrupted_state_gives_the_corrupted_logits(corr):
    """Planted: in a 1-layer RWKV without token shift in the channel mix, the last position sees
    the prompt only through the state it reads (its own token A and the shifted filler token are
    the same in both prompts), so the
    corrupted read state alone, or the corrupted k, v at the positions where they differ (A1 or
    B1, and the next one through the token shift), give exactly the corrupted logits."""
    model = _model(1, seed=3)
    with torch.no_grad():     # no token shift in the channel mix (it would read y at T-2)
        model.rwkv.blocks[0].feed_forward.time_mix_key.fill_(1.0)
        model.rwkv.blocks[0].feed_forward.time_mix_receptance.fill_(1.0)
    p = induction_prompts(6, 10, VOCAB, BOS, seed=4)
    effects = wkv_paths.rwkv_experiments(model, [p], batch_size=6, effects=Effects(0))
    row = _rows(effects, "state", layer=0, corruption=corr)
    assert abs(row.corrupt_logit_diff) > 1e-2
    assert row.logit_diff == pytest.approx(row.corrupt_logit_diff, abs=1e-5)
    b = wkv_paths._Batch(model, p, slice(None))
    _, cache = b.corrupt(corr)
    first = p.a1 + (1 if corr == B_ else 0)
    read = wkv_paths.kv_read_state(model, 0, b.cache, cache, [first, first + 1])
    full = b.run_all(0, tuple(cache[n] for n in wkv_paths.state_hook_names(0)))
    assert (b.run_read(0, read)[0] - b.logit).mean().item() == pytest.approx(row.corrupt_logit_diff, abs=1e-5)
    assert (full - b.logit).mean().item() == pytest.approx(row.corrupt_logit_diff, abs=1e-5)


def test_summary_names_key_layer_and_peaks(setting):
    _, effects, _ = setting
    s = wkv_paths.summarise_rwkv(effects)
    means = s["state_logit_diff_by_layer"]
    assert s["key_layer"] == int(min(means, key=means.get))
    for c in (B_, A_):
        kv = s["kv_in_logit_diff_by_position"][c]["kv"]
        assert s["kv_in_peak_position"][c] == min(kv, key=kv.get)
    text = wkv_paths.describe_rwkv({**s, "model": "toy"})
    assert f"key layer is {s['key_layer']}" in text and "Broader variant" in text


def test_figures_report_tables_and_comparison_from_the_tables(setting, tmp_path):
    from universality.circuits import figures, side_by_side
    from universality.report.circuits import circuit_tables

    _, effects, _ = setting
    s = {**wkv_paths.summarise_rwkv(effects), "model": "toy"}
    tables = []
    for name, df in effects.tables().items():
        path = tmp_path / "circuits" / "toy" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        tables.append(str(path))
    made = circuit_tables({"primary": {"rwkv": "toy"}, "rwkv": {"toy": s}, "tables": tables}, str(tmp_path))
    kv = [t for t in made if "key and value" in t["title"] and "[A][B']" in t["title"]]
    assert len(kv) == 1 and [r[0] for r in kv[0]["rows"]] == list(POSITIONS)
    row = _rows(effects, "kv_in", layer=s["key_layer"], position="B1", patched="kv", corruption=B_)
    assert kv[0]["rows"][1][1].startswith(f"{row.logit_diff:+.2f} [")
    state = [t for t in made if t["title"].startswith("toy: WKV state") and "[A][B']" in t["title"]]
    assert state[0]["rows"][-1][0] == "full corruption"
    figures.rwkv_state(effects.table("state"), "toy", tmp_path / "a.png")
    figures.rwkv_kv_in(effects.table("kv_in"), s["key_layer"], "toy", tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "b.png").stat().st_size > 1000
    (sentence,) = side_by_side.comparison(None, None, s)
    k = s["key_layer"]
    assert f"layer {k}" in sentence and f"{s['state_logit_diff_by_layer'][str(k)]:+.2f}" in sentence
    assert f"at {s['kv_in_peak_position'][B_]}" in sentence and f"{s['corrupt_logit_diff']:+.2f}" in sentence
