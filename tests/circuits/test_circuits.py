"""Induction prompts, path-patching identities, the circuit tables, and the rules' plan."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, MambaConfig, MambaForCausalLM

from universality.circuits import heads, ssm_paths
from universality.circuits import induction as circuits
from universality.circuits.effects import Effects
from universality.circuits.induction import PREFIX, Prompts, induction_prompts
from universality.core.hooks import run_with_cache
from universality.models import registry
from universality.models.mamba import MambaLM
from universality.models.gpt_neox import NeoXLM
from universality.circuits.patching import Patch, final_logits, path_patch

VOCAB, BOS = 120, 0


@pytest.fixture(scope="module")
def mamba():
    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, state_size=8, expand=2,
                      conv_kernel=4)
    model = MambaLM.from_hf(MambaForCausalLM(cfg)).eval()
    # At initialisation the SSM path barely moves the logits (patching effects ~1e-4, near
    # float32 noise); slower decay and larger projections make every path matter.
    with torch.no_grad():
        for block in model.backbone.layers:
            block.mixer.dt_proj.bias.fill_(-1.0)
            block.mixer.out_proj.weight.mul_(8)
            block.mixer.x_proj.weight.mul_(4)
    return model


@pytest.fixture(scope="module")
def neox():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout=0.0, attention_dropout=0.0,
                        tie_word_embeddings=False)
    return NeoXLM.from_hf(GPTNeoXForCausalLM(cfg).eval())


def prompts(n=6, distances=(8, 12), seed=0):
    return [induction_prompts(n, d, VOCAB, BOS, seed) for d in distances]


def clean_as_corrupt(p: Prompts) -> Prompts:
    return Prompts(p.distance, p.clean, {k: p.clean.clone() for k in p.corrupt}, p.answer, p.a1)


# ------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("d", [8, 16, 33])
def test_prompt_layout_and_corruptions(d):
    p = induction_prompts(20, d, VOCAB, BOS, seed=3)
    a1, b1, a2 = p.a1, p.b1, p.a1 + d
    assert p.clean.shape == (20, circuits.prompt_length(d)) and a1 == 1 + PREFIX and a2 == p.clean.shape[1] - 1
    assert (p.clean[:, 0] == BOS).all() and (p.clean[:, 1:] != BOS).all()
    assert torch.equal(p.clean[:, a1], p.clean[:, a2]) and torch.equal(p.clean[:, b1], p.answer)
    for corr, pos in (("B'", b1), ("A'", a1)):
        diff = (p.corrupt[corr] != p.clean)
        assert diff[:, pos].all() and diff.sum() == 20, corr     # exactly one token per prompt
    for i in range(20):
        special = {int(p.clean[i, a1]), int(p.clean[i, b1]), int(p.corrupt["B'"][i, b1]), int(p.corrupt["A'"][i, a1])}
        assert len(special) == 4
        rest = [int(t) for j, t in enumerate(p.clean[i]) if j not in (0, a1, b1, a2)]
        assert not special & set(rest)                          # A, B, A', B' occur nowhere else
    again = induction_prompts(20, d, VOCAB, BOS, seed=3)
    assert torch.equal(again.clean, p.clean) and torch.equal(again.corrupt["A'"], p.corrupt["A'"])
    assert not torch.equal(induction_prompts(20, d, VOCAB, BOS, seed=4).clean, p.clean)


def test_bad_prompt_requests_are_refused():
    with pytest.raises(ValueError, match="distance"):
        induction_prompts(2, 1, VOCAB, BOS, 0)
    with pytest.raises(ValueError, match="vocabulary"):
        induction_prompts(2, 8, 5, BOS, 0)


# ------------------------------------------------------------------------------------- identities
def test_patching_clean_into_clean_changes_nothing(neox):
    """(Mamba tables: tests/circuits/test_paper_definitions.py.) Head patching and head paths."""
    ps = [clean_as_corrupt(p) for p in prompts()]
    e = heads.head_patching(neox, ps, batch_size=4)
    paths = heads.head_path_patching(neox, ps, [(1, 0), (1, 3)], batch_size=4, effects=e).table("head_paths")
    t = e.table("head_patching")
    assert len(t) == 2 * 2 * 4 * 2 and (t.logit_diff.abs() < 1e-5).all()
    assert len(paths) == 2 * 4 * 2 * 3 * 2 and (paths.logit_diff.abs() < 1e-5).all()


@pytest.mark.parametrize("which", ["mamba", "neox"])
def test_patching_every_path_equals_the_corrupted_run(which, mamba, neox):
    """The embedding output feeds every path: patched whole, nothing frozen, it IS the corrupted run;
    likewise the last block's output."""
    model = mamba if which == "mamba" else neox
    p = prompts(n=4)[0]
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    corrupted, cache = final_logits(model, p.corrupt["B'"], ["blocks.0.hook_resid_pre", last])
    clean, _ = final_logits(model, p.clean)
    for site in ("blocks.0.hook_resid_pre", last):
        got = path_patch(model, p.clean, [Patch(site, cache[site])])
        torch.testing.assert_close(got, corrupted, rtol=1e-5, atol=1e-5)
    assert (clean - corrupted).abs().max() > 1e-3      # the identity is not vacuous


def test_whole_state_override_equals_the_hook_state_patch(mamba):
    """The fast path (y = <h, C> + D c at hook_ssm_out) against the model's own hook_state site."""
    p = prompts(n=4)[1]
    names = [f"blocks.{l}.mixer.hook_state" for l in range(mamba.n_layers)]
    _, clean = final_logits(mamba, p.clean, names)
    _, corrupt = final_logits(mamba, p.corrupt["B'"], names)
    for layer in range(mamba.n_layers):
        frozen = {m: clean[names[m]] for m in range(layer + 1, mamba.n_layers)}
        fast = path_patch(mamba, p.clean, states={layer: corrupt[names[layer]], **frozen})
        slow = path_patch(mamba, p.clean, [Patch(names[layer], corrupt[names[layer]])],
                          frozen={names[m]: clean[names[m]] for m in frozen})
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_states_from_cached_scan_inputs_equal_the_hook_state_site(mamba):
    from universality.circuits.patching import SCAN_INPUTS, ssm_states

    p = prompts(n=3)[1]
    names = [f"blocks.{l}.mixer.{n}" for l in range(mamba.n_layers) for n in SCAN_INPUTS + ("hook_state",)]
    _, cache = final_logits(mamba, p.clean, names)
    for layer in range(mamba.n_layers):
        torch.testing.assert_close(ssm_states(mamba, cache, layer), cache[f"blocks.{layer}.mixer.hook_state"])


def test_starting_at_a_later_block_is_exact(mamba, neox):
    p = prompts(n=3)[0]
    for model in (mamba, neox):
        name = "blocks.1.hook_resid_pre"
        full, cache = final_logits(model, p.clean, [name])
        torch.testing.assert_close(path_patch(model, p.clean), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(path_patch(model, p.clean, start=1, resid=cache[name]), full,
                                   rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="resid"):
            path_patch(model, p.clean, start=1)


def test_freezing_later_states_blocks_their_paths(mamba):
    p = prompts(n=4)[0]
    names = [f"blocks.{l}.mixer.hook_state" for l in range(mamba.n_layers)]
    _, clean = final_logits(mamba, p.clean, names)
    _, corrupt = final_logits(mamba, p.corrupt["B'"], names)
    free = path_patch(mamba, p.clean, states={0: corrupt[names[0]]})
    frozen = path_patch(mamba, p.clean, states={0: corrupt[names[0]], 1: clean[names[1]], 2: clean[names[2]]})
    assert (free - frozen).abs().max() > 1e-2


def test_senders_and_frozen_sites_must_differ(mamba):
    p = prompts(n=2)[0]
    _, c = final_logits(mamba, p.clean, ["blocks.0.mixer.hook_ssm_in"])
    with pytest.raises(ValueError, match="both patched and frozen"):
        path_patch(mamba, p.clean, [Patch("blocks.0.mixer.hook_ssm_in", c["blocks.0.mixer.hook_ssm_in"])],
                   frozen={"blocks.0.mixer.hook_ssm_in": c["blocks.0.mixer.hook_ssm_in"]})


# ------------------------------------------------------------------------------------- tables
def test_mamba_tables_columns_and_causality(mamba):
    ps = prompts(n=6)
    e = ssm_paths.mamba_experiments(mamba, ps, batch_size=4, effects=Effects(100))
    t = e.tables()
    L = mamba.n_layers
    assert len(t["state"]) == 2 * L * 2 and len(t["ssm_in"]) == 2 * L * 5 * 2 and len(t["conv_in"]) == 2 * 2 * 3
    assert len(t["state_all_positions"]) == 2 * L and len(t["ssm_in_all_paths"]) == 2 * L * 5
    key = int(e.wins("state", "layer", {"corruption": "B'"})["winner"])
    assert set(t["conv_in"].layer) == {key} and (t["state"].prompts == 6).all()
    for name, df in t.items():
        assert ((df.ci_low <= df.logit_diff + 1e-12) & (df.logit_diff <= df.ci_high + 1e-12)).all(), name
    # B' changes the prompt at B1 only: c and x at A1 are the clean values, the patch is a no-op.
    c, x = t["ssm_in"], t["conv_in"]
    assert (c[(c.position == "A1") & (c.corruption == "B'")].logit_diff.abs() < 1e-6).all()
    assert (x[(x.position == "A1") & (x.corruption == "B'")].logit_diff.abs() < 1e-6).all()
    # the broader state variant is the old definition: every position of the layer, later states frozen
    row = t["state_all_positions"].iloc[0]
    p = ps[0]
    names = [f"blocks.{l}.mixer.hook_state" for l in range(L)]
    lc, clean = final_logits(mamba, p.clean, names)
    lx, corrupt = final_logits(mamba, p.corrupt["B'"], names)
    layer = int(row.layer)
    frozen = {m: clean[names[m]] for m in range(layer + 1, L)}
    patched = path_patch(mamba, p.clean, states={layer: corrupt[names[layer]], **frozen})
    b = p.answer.numpy()
    ref = np.mean([float(patched[i, b[i]]) - float(lc[i, b[i]]) for i in range(len(b))])
    full = np.mean([float(lx[i, b[i]]) - float(lc[i, b[i]]) for i in range(len(b))])
    assert row.distance == p.distance
    assert row.logit_diff == pytest.approx(ref, abs=1e-5) and row.corrupt_logit_diff == pytest.approx(full, abs=1e-5)
    assert row.fraction == pytest.approx(ref / full, rel=1e-4)
    # in the last layer nothing follows the state: the last-position patch is the all-positions one
    last = t["state"][(t["state"].layer == L - 1) & (t["state"].corruption == "B'")].logit_diff.to_numpy()
    broad = t["state_all_positions"][t["state_all_positions"].layer == L - 1].logit_diff.to_numpy()
    np.testing.assert_allclose(last, broad, atol=1e-5)
    s = ssm_paths.summarise_mamba(e)
    assert s["key_layer"] == key and s["ssm_in_peak_position"] in circuits.POSITIONS
    assert 0 < s["key_layer_share"] <= 1 and sum(s["state"]["share"].values()) == pytest.approx(1)
    assert "key layer is" in circuits.describe_mamba({**s, "model": "m"})


def test_head_scores_against_a_float64_loop(neox):
    L = 10
    rows = heads.repeated_tokens(3, L, VOCAB, BOS, seed=1)
    assert rows.shape == (3, 2 * L + 1) and torch.equal(rows[:, 1 : L + 1], rows[:, L + 1 :])
    scores = heads.head_scores(neox, rows, L)
    _, cache = run_with_cache(neox, rows, [f"blocks.{l}.attn.hook_pattern" for l in range(2)])
    for r in scores.itertuples():
        pat = cache[f"blocks.{r.layer}.attn.hook_pattern"][:, r.head].double().numpy()
        prev = np.mean([pat[b, q, q - 1] for b in range(3) for q in range(2, 2 * L + 1)])
        ind = np.mean([pat[b, q, q - L + 1] for b in range(3) for q in range(L + 1, 2 * L + 1)])
        assert r.prev_token == pytest.approx(prev, abs=1e-6) and r.induction == pytest.approx(ind, abs=1e-6)


def test_head_path_patching_equals_a_full_forward_with_the_write_added(neox):
    """Sender L0H{s} -> receiver L1H{g}'s key: the receiver layer's input gets the sender's write
    difference (hook_result) and nothing else; its key replaces the clean key of head g only."""
    from universality.core.hooks import hooks

    p = prompts(n=4, distances=(8,))[0]
    e = heads.head_path_patching(neox, [p], [(1, 2)], batch_size=4)
    _, clean = final_logits(neox, p.clean, ["blocks.0.attn.hook_result", "blocks.1.attn.hook_k"])
    _, bad = final_logits(neox, p.corrupt["A'"], ["blocks.0.attn.hook_result"])
    for s in range(4):
        write = bad["blocks.0.attn.hook_result"][:, :, s] - clean["blocks.0.attn.hook_result"][:, :, s]
        _, seen = run_with_cache(neox, p.clean, ["blocks.1.attn.hook_k"],
                                 fwd_hooks={"blocks.1.hook_resid_pre": lambda t, _n: t + write})
        k = clean["blocks.1.attn.hook_k"].clone()
        k[:, :, 2] = seen["blocks.1.attn.hook_k"][:, :, 2]
        with torch.no_grad(), hooks(neox, {"blocks.1.attn.hook_k": lambda t, _n: k}):
            want = neox(p.clean)[:, -1]
        want = want.gather(1, p.answer[:, None])[:, 0].double().numpy()
        key = {"distance": 8, "sender_layer": 0, "sender_head": s, "receiver_layer": 1, "receiver_head": 2,
               "input": "k", "corruption": "A'"}
        np.testing.assert_allclose(e.values("head_paths", key)[2], want, atol=1e-5)
    assert heads.receivers_of(heads.head_scores(neox, heads.repeated_tokens(2, 6, VOCAB, BOS, 0), 6), 2)[0][0] == 1


def test_summarise_neox_takes_the_previous_token_head_before_the_induction_head():
    scores = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                           "prev_token": [0.2, 0.9, 0.95, 0.1], "induction": [0.0, 0.1, 0.2, 0.8]})
    e = Effects(50)
    zero = torch.zeros(3, dtype=torch.float64)
    for l in (0, 1):
        for h in (0, 1):
            for c in ("B'", "A'"):
                e.add("head_patching", {"distance": 8, "layer": l, "head": h, "corruption": c}, zero, zero - 5,
                      zero - float(l + h))
    for s in (0, 1):
        for inp in heads.INPUTS:
            for c in ("B'", "A'"):
                e.add("head_paths", {"distance": 8, "sender_layer": 0, "sender_head": s, "receiver_layer": 1,
                                     "receiver_head": 1, "input": inp, "corruption": c}, zero, zero - 5,
                      zero - (2.0 if (s, inp) == (1, "k") else 0.1))
    s = heads.summarise_neox(scores, e)
    assert s["induction_head"]["name"] == "L1H1" and s["previous_token_head"]["name"] == "L0H1"
    assert s["previous_token_head"]["logit_diff"]["A'"] == -1.0 and s["corrupt_logit_diff"]["B'"] == -5.0
    assert s["strongest_path"]["sender"] == "L0H1" and s["strongest_path"]["share"] == 1.0
    text = circuits.describe_neox({**s, "model": "n"})
    assert "previous-token head L0H1" in text and "measured previous-token -> induction path" in text


# ------------------------------------------------------------------------------------- loading
def test_instrumented_models_load_tiny_hub_layout_checkpoints(tmp_path):
    """The Mamba-130m path: a transformers save_pretrained folder (``*-hf`` layout) -> MambaLM."""
    torch.manual_seed(5)
    x = torch.randint(1, VOCAB, (2, 14))
    hf_m = MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, state_size=4)).eval()
    hf_m.save_pretrained(str(tmp_path / "mamba"))
    hf_n = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2,
                                            num_attention_heads=3, intermediate_size=48)).eval()
    hf_n.save_pretrained(str(tmp_path / "neox"))
    for name, hf, cls in (("mamba", hf_m, MambaLM), ("neox", hf_n, NeoXLM)):
        ours = registry.load_model(tmp_path / name, external=True)  # a plain save_pretrained: no record
        assert isinstance(ours, cls)
        with torch.no_grad():
            assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4
    from transformers import RwkvConfig, RwkvForCausalLM

    from universality.models.rwkv import RwkvLM

    RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                               attention_hidden_size=16, intermediate_size=32)).save_pretrained(str(tmp_path / "rwkv"))
    rwkv = registry.load_model(tmp_path / "rwkv", external=True)
    assert rwkv.config.model_type == "rwkv" and isinstance(rwkv, RwkvLM)
    assert registry.get("rwkv").circuits == "wkv"       # WKV-state path patching (circuits.wkv_paths)


# ------------------------------------------------------------------------------------- rules
def test_paper_preset_plans_the_circuit_rules(repo, tmp_path):
    root = tmp_path / "r"
    target = root / "circuits" / "summary.json"
    cmd = [sys.executable, "-m", "snakemake", "-n", str(target), "--configfile", str(repo / "presets" / "paper.yaml"),
           "--config", f"results={root}"]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"),
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    import yaml

    from universality.workflow.config import circuit_models, validate

    planned = circuit_models(validate(yaml.safe_load((repo / "presets" / "paper.yaml").read_text())))
    assert "mamba-130m" in planned["ssm"] and planned["heads"]
    for arch, rule in (("ssm", "circuits_ssm"), ("heads", "circuits_heads")):
        jobs = re.findall(rf"rule {rule}:\n(?:.*\n)*?\s+wildcards: model=(\S+)", out)
        assert sorted(set(jobs)) == sorted(planned[arch]), (rule, jobs)
    assert str(root / "circuits" / "mamba-130m" / "off_by_one.png") in out
    for table in ssm_paths.table_names(True):     # the paper's tables and the broader variants
        assert str(root / "circuits" / "mamba-130m" / f"{table}.csv") in out
    assert str(root / "circuits" / "pythia-160m" / "head_paths.csv") in out
    assert "reference=mamba-130m" in out or "mamba-130m" in out
    assert str(root / "circuits" / "induction_circuits.png") in out


def test_circuit_config_errors_name_the_key():
    import yaml

    from universality.workflow.config import ConfigError, validate

    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "presets" / "micro.yaml").read_text())
    for change, key in (({"models": ["nope"]}, r"circuits\.models\[0\]"),
                        ({"distances": [8, 200]}, r"circuits\.distances\[1\]"),
                        ({"score_length": 40}, r"circuits\.score_length")):
        cfg = {**base, "circuits": {**base.get("circuits", {}), **change}}
        with pytest.raises(ConfigError, match=key):
            validate(cfg)


# ------------------------------------------------------------------------------------- IOI
def test_random_frame_ioi_prompts_follow_the_frame():
    from universality.circuits import ioi

    p = ioi.random_frame_prompts(12, VOCAB, BOS, seed=2)
    labels = p["labels"]
    assert labels[0] == "BOS" and tuple(labels[1:]) == ioi.FRAME and p["clean"].shape == (12, len(labels))
    io_pos, s_pos = labels.index("IO"), [labels.index("S1"), labels.index("S2")]
    assert torch.equal(p["clean"][:, io_pos], p["io"])
    assert all(torch.equal(p["clean"][:, q], p["s"]) for q in s_pos)
    names = [io_pos] + s_pos
    frame = [q for q in range(1, len(labels)) if q not in names]
    assert (p["clean"][:, frame] == p["clean"][0, frame]).all()          # one template for all prompts
    assert torch.equal(p["corrupt"][:, frame], p["clean"][:, frame])
    assert (p["corrupt"][:, names] != p["clean"][:, names]).all()
    assert torch.equal(p["corrupt"][:, s_pos[0]], p["corrupt"][:, s_pos[1]])   # S' in both slots
    assert (p["io"] != p["s"]).all() and not set(p["io"].tolist()) & set(p["clean"][0, frame].tolist())
    assert not p["templated"]


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return tok


def test_templated_ioi_prompts_use_one_token_names_and_fall_back_with_a_reason():
    from universality.circuits import ioi

    words = ["Then", ",", "and", "went", "to", "the", ".", "gave", "a", "hospital", "computer", "store", "book",
             *ioi.NAMES[:10]]
    tok = _word_tokenizer(words)
    p = ioi.ioi_prompts(20, tok.get_vocab_size(), 0, seed=1, tok=tok)
    assert p["templated"] and p["labels"][:4] == ["BOS", "Then", ",", "IO"]
    io, s1, s2 = (p["labels"].index(k) for k in ("IO", "S1", "S2"))
    assert torch.equal(p["clean"][:, io], p["io"]) and torch.equal(p["clean"][:, s1], p["s"])
    assert torch.equal(p["clean"][:, s2], p["s"]) and (p["io"] != p["s"]).all()
    names = {tok.token_to_id(n) for n in ioi.NAMES[:10]}
    assert set(p["io"].tolist()) <= names and set(p["s"].tolist()) <= names
    assert (p["corrupt"][:, [io, s1, s2]] != p["clean"][:, [io, s1, s2]]).all()
    rest = [q for q in range(p["clean"].shape[1]) if q not in (io, s1, s2)]
    assert torch.equal(p["corrupt"][:, rest], p["clean"][:, rest])          # places / objects kept
    assert p["example"].startswith("Then")
    few = ioi.ioi_prompts(4, 40, 0, seed=1, tok=_word_tokenizer(words[:13] + list(ioi.NAMES[:3])))
    assert not few["templated"] and "3 of" in few["reason"] and "need 8" in few["reason"]


def test_ioi_experiment_identities_and_causality(mamba):
    from universality.circuits import ioi

    p = ioi.random_frame_prompts(6, VOCAB, BOS, seed=0)
    same = {**p, "corrupt": p["clean"].clone()}
    t = ioi.ioi_experiment(mamba, same, batch_size=4).table("ioi")
    assert len(t) == 3 * mamba.n_layers * (len(p["labels"]) - 1) and (t.logit_diff.abs() < 1e-5).all()
    e = ioi.ioi_experiment(mamba, p, batch_size=4, effects=Effects(100))
    t = e.table("ioi")
    # positions before IO hold the same tokens in both runs: patching c there changes nothing
    before = t[t.position < p["labels"].index("IO")]
    assert len(before) and (before.logit_diff.abs() < 1e-6).all()
    assert (t.logit_diff.abs() > 1e-4).any()
    # the IO - S change is the IO change minus the S change, prompt by prompt
    key = {"distance": 0, "layer": 1, "position": 5, "token": p["labels"][5]}
    diff, io, s_ = (e.values("ioi", {**key, "metric": m}) for m in ioi.METRICS)
    np.testing.assert_allclose(diff[2] - diff[0], (io[2] - io[0]) - (s_[2] - s_[0]), atol=1e-9)
    s = ioi.summarise_ioi(e, p)
    assert s["peak_token"] in p["labels"] and 0 < s["peak_share"] <= 1 and set(s["slots"]) == {"IO", "S1", "S2"}
    assert "Off-by-one" in s["off_by_one"] and not s["templated"]
