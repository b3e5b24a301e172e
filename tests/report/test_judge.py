"""The judge's pieces without a model: prompts, samples, sampling, answers, cache and resume, stats."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from universality.report.judge import base, contexts, prompts, scores, summary
from universality.report.judge.base import Answer

#: The paper's OCR'd text (shared/ beside the checkout, as on the developers' machines and in CI).
SEED_TEXT = next((p for p in (Path(__file__).resolve().parents[3] / "shared" / "seeds" / "002_f7829ed2b9f30102.txt",
                              Path("/work/shared/seeds/002_f7829ed2b9f30102.txt")) if p.exists()), None)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.mark.parametrize("score, start, end", [
    ("complexity", "We used the following prompt to have the LLM evaluate our Complexity:", "E.2 USE FOR"),
    ("monosemanticity", "We used the following prompt to have the LLM evaluate our Activation Consistency:",
     "Following this prompt")])
def test_prompts_are_the_papers_app_e_text(score, start, end):
    text = prompts.load_prompts("appE-v1")[score]
    if SEED_TEXT is None:
        pytest.skip("the paper's text (shared/seeds) is not beside this checkout")
    paper = re.sub(r"-\s*\n\s*", "", SEED_TEXT.read_text())  # the OCR's line-end hyphenation
    section = paper[paper.index(start) + len(start):]
    section = section[:section.index(end)]
    # the OCR'd section has a page footer / figure caption inside it; every word of ours is in it, in order
    ours, theirs = words(text), words(section)
    it = iter(theirs)
    assert all(w in it for w in ours), "prompt words not in the paper's order"
    assert len(ours) > 100 and "number" in ours


def test_prompt_hash_changes_with_the_text(monkeypatch, tmp_path):
    h = prompts.prompt_hash("appE-v1")
    assert re.fullmatch(r"[0-9a-f]{16}", h) and h == prompts.prompt_hash("appE-v1")
    for name, f in prompts.PROMPT_SETS["appE-v1"].items():
        (tmp_path / f).write_text((prompts.PROMPT_DIR / f).read_text() + ("!" if name == "complexity" else ""))
    monkeypatch.setattr(prompts, "PROMPT_DIR", tmp_path)
    assert prompts.prompt_hash("appE-v1") != h
    with pytest.raises(ValueError, match="judge.prompts: 'v9'"):
        prompts.load_prompts("v9")


def test_format_samples_scales_activations_to_0_10():
    f = {"max": 4.0, "contexts": [{"tokens": ["a", " b\n", "c"], "acts": [0.0, 4.0, 1.0], "centre": 1}] * 2}
    text = contexts.format_samples(f)
    assert text.splitlines() == ["Sample 1: a[0] b\\n[10]c[3]", "Sample 2: a[0] b\\n[10]c[3]"]


def test_choose_features_is_stratified_per_bin():
    rng = np.random.default_rng(0)
    fw = pd.DataFrame({"layer": np.repeat([0, 1], 500), "feature": np.tile(np.arange(500), 2),
                       "mppc": rng.beta(5, 1, 1000), "match_layer": 0, "match_feature": 0})
    fw.loc[3, "mppc"] = np.nan
    chosen = contexts.choose_features(fw, [0.0, 0.2, 0.5, 1.0], 4, seed=1)
    counts = chosen.groupby("bin").size().to_dict()
    want = {b: min(4, int(((fw.mppc >= lo) & (fw.mppc < hi if hi < 1 else fw.mppc <= hi)).sum()))
            for b, lo, hi in (("[0, 0.2)", 0, 0.2), ("[0.2, 0.5)", 0.2, 0.5), ("[0.5, 1]", 0.5, 1.0))}
    assert counts == {k: v for k, v in want.items() if v}
    assert chosen.equals(contexts.choose_features(fw, [0.0, 0.2, 0.5, 1.0], 4, seed=1))
    assert len(contexts.choose_features(fw, [0.0, 0.2, 0.5, 1.0], None, seed=1)) == 999


@pytest.mark.parametrize("raw, want", [("3", 3), ("Score: 4.", 4), ("**2**", 2), ("1/5", 1), ("10", None),
                                       ("4.5", None), ("The feature you're looking for", None), ("", None)])
def test_from_text(raw, want):
    a = base.from_text(raw)
    assert (a.argmax if a.parsed else None) == want


def test_from_probabilities_against_a_loop():
    probs = {"1": 0.01, "2": 0.02, "3": 0.3, "4": 0.05, "5": 0.02, "x": 0.6}
    a = base.from_probabilities(probs, "x", "next-token")
    total = sum(probs[str(k)] for k in range(1, 6))
    assert a.expected == pytest.approx(sum(k * probs[str(k)] for k in range(1, 6)) / total)
    assert a.argmax == 3 and a.digit_mass == pytest.approx(total)
    assert base.from_probabilities({"1": 0.0}, "x", "s") is None


def test_slug_and_identity_have_no_secret():
    opts = {"kind": "openai", "model": "gpt-4o-2024-08-06", "base_url": "https://h/v1", "api_key_env": "K"}
    assert base.slug(base.judge_identity(opts)) == "openai-gpt-4o-2024-08-06"
    assert base.slug({"kind": "local", "model": "/x/SmolLM2-135M-Instruct.Q4_1.gguf"}) == "local-smollm2-135m-instruct.q4-1"


class CountingJudge:
    """Answers 1 + len(prompt) % 5; raises after ``fail_after`` answers (a killed job)."""

    identity = {"kind": "test", "model": "counting"}

    def __init__(self, fail_after=None):
        self.asked, self.fail_after = [], fail_after

    def answer(self, prompts_, on_answer=None):
        out = []
        for i, p in enumerate(prompts_):
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise KeyboardInterrupt("killed")
            self.asked.append(p)
            k = 1 + len(p) % 5
            a = Answer(expected=float(k), argmax=k, raw=str(k), parsed=True, source="text") if k != 5 else \
                Answer(expected=math.nan, argmax=0, raw="no idea", parsed=False, source="none")
            on_answer(i, a)
            out.append(a)
        return out


def features(n):
    return [{"layer": i % 2, "feature": i, "mppc": i / n, "bin": "b", "max": 1.0, "fires": 3,
             "contexts": [{"tokens": ["t"] * (i + 1), "acts": [1.0] * (i + 1), "centre": 0, "window": i}]}
            for i in range(n)]


def test_a_killed_job_resumes_without_asking_again(tmp_path):
    P = {"complexity": "C?", "monosemanticity": "M?"}
    feats = features(6)
    with pytest.raises(KeyboardInterrupt):
        scores.score_features(CountingJudge(fail_after=5), feats, P, scores.AnswerCache(tmp_path / "c.jsonl"), "h", "t")
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "cut')  # a line cut by the kill
    again = CountingJudge()
    table = scores.score_features(again, feats, P, scores.AnswerCache(tmp_path / "c.jsonl"), "h", "t")
    assert len(again.asked) == 12 - 5
    fresh = scores.score_features(CountingJudge(), feats, P, scores.AnswerCache(tmp_path / "new.jsonl"), "h", "t")
    pd.testing.assert_frame_equal(table, fresh)
    assert list(table.columns) == scores.score_columns() and (table["prompt_hash"] == "h").all()
    # unparseable answers are rows with NaN scores, counted, not dropped
    bad = ~table["complexity_parsed"] | ~table["monosemanticity_parsed"]
    assert bad.any() and len(table) == 6 and table.loc[~table["complexity_parsed"], "complexity"].isna().all()
    # another judge identity never reuses these answers
    other = CountingJudge()
    other.identity = {"kind": "test", "model": "other"}
    scores.score_features(other, feats, P, scores.AnswerCache(tmp_path / "c.jsonl"), "h", "t")
    assert len(other.asked) == 12


def test_read_scores_round_trips_and_checks_columns(tmp_path):
    table = scores.score_features(CountingJudge(), features(4), {"complexity": "C", "monosemanticity": "M"},
                                  scores.AnswerCache(tmp_path / "c.jsonl"), "h", "t")
    table.to_csv(tmp_path / "L0.csv", index=False)
    back = scores.read_scores([str(tmp_path / "L0.csv")])
    assert back["complexity_parsed"].dtype == bool and back["complexity"].isna().sum() == table["complexity"].isna().sum()
    pd.DataFrame({"layer": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv: not a judge score table"):
        scores.read_scores([str(tmp_path / "bad.csv")])


def test_summary_statistics_against_a_loop():
    rng = np.random.default_rng(3)
    n = 60
    table = pd.DataFrame({"layer": 0, "feature": np.arange(n), "mppc": 0.0, "bin": "b"})
    for s in prompts.SCORES:
        k = rng.integers(1, 6, n)
        table[s], table[f"{s}_argmax"], table[f"{s}_parsed"] = k + rng.normal(0, 0.1, n), k, True
        table[f"{s}_digit_mass"] = 0.5
    forward = pd.DataFrame({"layer": 0, "feature": np.arange(n), "mppc": rng.uniform(-0.1, 1, n)})
    proxy = pd.DataFrame({"layer": 0, "feature": np.arange(n), "token_share": rng.uniform(0, 1, n),
                          "distinct_top": rng.integers(1, 11, n)})
    out = summary.source_summary(table, {"c": forward}, {"c": "cross_arch"}, proxy)
    for row in out["comparisons"]["c"]["monosemanticity"]["by_score"]:
        v = [m for m, k in zip(forward.mppc, table.monosemanticity_argmax) if k == row["score"]]
        assert row["n"] == len(v) and row["median"] == pytest.approx(np.median(v))
        assert row["share_below_low"] == pytest.approx(sum(x < 0.2 for x in v) / len(v))
    from scipy import stats
    assert out["proxy"]["token_share"]["spearman"] == pytest.approx(stats.spearmanr(table.complexity, proxy.token_share)[0])
    assert out["unparseable"] == {"complexity": 0, "monosemanticity": 0}


def test_prefix_reuse_matches_a_full_forward():
    """The local judge's cache reuse: next-token logits as a full forward's, for prompts that share
    prefixes of several lengths with earlier ones (a tiny random Llama, float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from universality.report.judge.local import PrefixReuse

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    head = torch.randint(0, 97, (1, 40), generator=g)
    prompts = [torch.cat([head, torch.randint(0, 97, (1, n), generator=g)], 1) for n in (9, 14, 5)]
    prompts += [prompts[1][:, :30], prompts[0], torch.randint(0, 97, (1, 20), generator=g)]
    reuse = PrefixReuse(model, keep=2, min_shared=8)
    for ids in prompts:
        got = reuse.last_logits(ids)
        with torch.inference_mode():
            want = model(ids).logits[0, -1]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [len(e[0]) for e in reuse.entries] == [20, 49]  # the last two prompts, newest first


def test_gguf_parsed_once_loads_the_same_judge(monkeypatch):
    """The memoised load (one parse of the file, one tensor-name map) gives the tokenizer and
    the weights of transformers' own load, parses the file once, and restores gguf."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from universality.report.judge import local

    path = local.default_gguf()
    folder, name = str(path.parent), path.name

    def load():
        return (AutoTokenizer.from_pretrained(folder, gguf_file=name),
                AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32))

    reader, parses = gguf.GGUFReader, []
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: parses.append(a) or reader(*a, **k))
    counted = gguf.GGUFReader
    with local.gguf_parsed_once():
        tok_a, model_a = load()
    assert gguf.GGUFReader is counted and len(parses) == 1
    tok_b, model_b = load()
    assert len(parses) == 4   # transformers alone: tokenizer, config, weights
    text = "Rate the complexity of this feature from 1 to 5: def f(x): return x + 1"
    assert tok_a.encode(text) == tok_b.encode(text) and tok_a.chat_template == tok_b.chat_template
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
