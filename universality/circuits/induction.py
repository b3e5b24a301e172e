"""Induction prompts, the logit metric, and the report sentences of the circuit experiments.

Prompts (one layout per distance d, shared by every prompt of that distance)::

    position: 0     1..P        A1  B1=A1+1   ...filler...   A2=A1+d
    token:    BOS   prefix      A   B         random          A        -> the model should say B

``P = PREFIX`` random tokens precede A1 so that the conv window of A1 never holds BOS. Every
random token is drawn from the tokenizer's ids (BOS excluded) and differs from A, B, A', B'.
Corruptions: ``B'`` = [A][B']...[A] (B1 replaced), ``A'`` = [A'][B]...[A] (A1 replaced).

Metric (the paper's Appendix G tables): the logit of the clean answer B at the last position,
patched run minus clean run, per prompt ("logit diff of token B"; negative = the patch removed
evidence for B); tables give its mean over prompts with a bootstrap interval
(:mod:`universality.circuits.effects`). The experiments: :mod:`universality.circuits.ssm_paths`
(Mamba), :mod:`universality.circuits.heads` (attention heads), :mod:`universality.circuits.ioi`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from universality.models import registry

__all__ = ["prompt_vocab", "PREFIX", "Prompts", "induction_prompts", "answer_logit", "batches",
           "prompt_length", "POSITIONS", "CORRUPTIONS", "describe_mamba", "describe_neox"]

#: Random tokens before A1 (so the width-4 conv at A1 reads tokens, not BOS).
PREFIX = 4
#: Position labels relative to A1/B1 used by the c / x tables (the paper's columns).
POSITIONS = {"A1": 0, "B1": 1, "B1+1": 2, "B1+2": 3, "B1+3": 4}
A_, B_ = "A'", "B'"          # [A'][B]...[A] and [A][B']...[A]
CORRUPTIONS = (B_, A_)


def prompt_length(distance: int) -> int:
    """Tokens in a prompt of this A1-A2 distance (BOS and prefix included)."""
    return 1 + PREFIX + distance + 1


@dataclass
class Prompts:
    """Clean and corrupted prompts of one distance; all int64 [n, prompt_length(distance)]."""

    distance: int
    clean: torch.Tensor
    corrupt: dict[str, torch.Tensor]      # {"B'": ..., "A'": ...}
    answer: torch.Tensor                  # B [n]
    a1: int                               # position of A1 (B1 = a1 + 1, A2 = a1 + distance)

    @property
    def b1(self) -> int:
        return self.a1 + 1


def induction_prompts(n: int, distance: int, vocab: int, bos: int, seed: int) -> Prompts:
    """``n`` prompts [BOS] prefix A B filler A (layout in the module docstring)."""
    if distance < 2:
        raise ValueError(f"distance must be >= 2 (A1, B1 and A2 distinct), got {distance}")
    ids = np.array([t for t in range(vocab) if t != bos], dtype=np.int64)
    if len(ids) < 8:
        raise ValueError(f"vocabulary of {vocab} ids is too small for induction prompts")
    rng = np.random.default_rng([seed, distance])
    length = prompt_length(distance)
    a1 = 1 + PREFIX
    clean = np.empty((n, length), dtype=np.int64)
    corrupt = {c: np.empty((n, length), dtype=np.int64) for c in CORRUPTIONS}
    answer = np.empty(n, dtype=np.int64)
    for i in range(n):
        a, b, a_, b_ = rng.choice(ids, size=4, replace=False)
        pool = ids[~np.isin(ids, [a, b, a_, b_])]
        row = rng.choice(pool, size=length)
        row[0], row[a1], row[a1 + 1], row[a1 + distance] = bos, a, b, a
        clean[i], answer[i] = row, b
        corrupt["B'"][i] = row
        corrupt["B'"][i, a1 + 1] = b_
        corrupt["A'"][i] = row
        corrupt["A'"][i, a1] = a_
    return Prompts(distance, torch.from_numpy(clean), {k: torch.from_numpy(v) for k, v in corrupt.items()},
                   torch.from_numpy(answer), a1)


def answer_logit(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """logits [n, vocab] -> logit of each prompt's answer [n] (float64 for the means)."""
    return logits.gather(1, answer[:, None])[:, 0].double()


def prompt_vocab(tokenizer_json: str, model) -> tuple[int, int]:
    """(ids to draw from: the first ``vocab`` ids, BOS id): ids both the tokenizer and the
    model's embedding know (Mamba-130m pads its embedding past the tokenizer's 50,277 ids)."""
    from universality.data import corpus

    tok = corpus.load_tokenizer(tokenizer_json)
    return min(tok.get_vocab_size(), model.config.vocab_size), corpus.bos_id(tok)


def setup(model_dir: str, tokenizer_json: str, options: dict):
    """What every circuits job starts from: (model on the ``options["backend"]`` device, vocab,
    BOS id, the induction prompts of every distance in ``options["distances"]``)."""
    from universality.core.device import torch_device

    lm = registry.load_model(model_dir).to(torch_device(options.get("backend", "auto")))
    vocab, bos = prompt_vocab(tokenizer_json, lm)
    prompts = [induction_prompts(options["prompts"], d, vocab, bos, options["seed"])
               for d in options["distances"]]
    return lm, vocab, bos, prompts


def batches(n: int, size: int):
    """Slices of ``size`` prompts covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ----------------------------------------------------------------------------------- report text
def _ci(w: dict, c) -> str:
    lo, hi = w["ci"][str(c)]
    return f"{w['mean'][str(c)]:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def describe_mamba(s: dict) -> str:
    """One paragraph stating the Mamba findings from a ``ssm_paths.summarise_mamba`` summary
    (+ ``model``, optional ``ioi``); numbers are means over distances [95% bootstrap interval]."""
    k, st = s["key_layer"], s["state"]
    others = ", ".join(f"L{l} {v:+.2f}" for l, v in st["mean"].items() if int(l) != k)
    c, x = s["ssm_in"], s["conv_in"]
    peak = c["winner"]
    off = ("one token after B1 (the off-by-one motif)" if peak == "B1+1" else
           "at B1 itself (no off-by-one delay)" if peak == "B1" else f"at {peak}")
    text = (f"{s['model']}: the key layer is {k} (lowest in {st['share'][str(k)]:.0%} of bootstrap resamples). "
            f"Patching its SSM state at the final [A] only, from [A][B']...[A], other layers' states frozen, "
            f"changes the logit of B by {_ci(st, k)} on average over distances ({s['key_layer_fraction']:.0%} of "
            f"the full corruption's {s['corrupt_logit_diff']:+.2f}; other layers: {others}). At layer {k} the SSM "
            f"input c, on its paths into the state only, matters most {off} (in {c['share'][peak]:.0%} of "
            f"resamples): " + ", ".join(f"{p} {v:+.2f}" for p, v in c["mean"].items()) + ". The conv input x, "
            f"into c at B1+1, carries B at {x[B_]['winner']} under [A][B']...[A] ({x[B_]['share'][x[B_]['winner']]:.0%}) "
            f"and A at {x[A_]['winner']} under [A'][B]...[A] ({x[A_]['share'][x[A_]['winner']]:.0%}) ("
            + "; ".join(f"{corr}: " + ", ".join(f"{p} {v:+.2f}" for p, v in x[corr]["mean"].items()) for corr in (B_, A_))
            + "). " + _motif(s))
    return text + _ioi_sentence(s.get("ioi"))


def _ioi_sentence(i: dict | None) -> str:
    if not i:
        return ""
    kind = ("templated sentences" if i["templated"] else f"IOI-style prompts with a random-token frame "
            f"({i['fallback_reason']})")
    return (f" IOI ({kind}; clean logit(IO) - logit(S) = {i['clean_logit_diff']:+.2f}): patching c per layer and "
            f"position (all paths except other layers' states) moves logit(IO) - logit(S) most at "
            f"'{i['peak_token']}' (layer {i['peak_layer']}, {i['peak_logit_diff']:+.2f}; that position wins in "
            f"{i['peak_share']:.0%} of resamples; full corruption {i['corrupt_logit_diff']:+.2f}). "
            f"{i['off_by_one']}")


def _motif(s: dict) -> str:
    """Whether the numbers show the paper's circuit: x[A1], x[B1] -> conv -> c[B1+1] -> state."""
    xp = {corr: w["winner"] for corr, w in s["conv_in"].items()}
    if s["ssm_in"]["winner"] == "B1+1" and xp.get(B_) == "B1" and xp.get(A_) == "A1":
        return ("As in the paper's Mamba-130m, the short convolution merges A (x at A1) and B (x at B1) "
                "into the SSM input one token after B, which writes them into the key layer's state.")
    return ("This differs from the paper's Mamba-130m, where c peaks at B1+1 and x at A1 (A') and "
            "B1 (B').")


def describe_neox(s: dict) -> str:
    """One paragraph stating the GPT-NeoX findings from a ``heads.summarise_neox`` summary (+ ``model``)."""
    p, i = s["previous_token_head"], s["induction_head"]
    text = (f"{s['model']}: previous-token head {p['name']} (attention to the previous token "
            f"{p['prev_token_score']:.2f}; patching its output from [A'][B]...[A] changes B's logit by "
            f"{p['logit_diff'].get(A_, float('nan')):+.2f}) and induction head {i['name']} "
            f"(attention to the token after the earlier occurrence {i['induction_score']:.2f}; patching it "
            f"from [A][B']...[A] changes B's logit by {i['logit_diff'].get(B_, float('nan')):+.2f}). "
            f"Full corruptions: " + ", ".join(f"{c} {v:+.2f}" for c, v in s["corrupt_logit_diff"].items()) + "."
            + (f" {s['induction_heads']} heads score above 0.5 as induction heads, so one head's patch "
               "shows only part of the effect." if s.get("induction_heads", 0) > 1 else ""))
    sp = s.get("strongest_path")
    if sp:
        w = s["paths"][f"k {A_}"]
        text += (f" Path patching into {sp['receiver']}'s key from [A'][B]...[A] (the sender's write alone, "
                 f"everything between frozen): the strongest sender is {sp['sender']} ({_ci(w, sp['sender'])}, "
                 f"lowest in {sp['share']:.0%} of resamples)"
                 + (", the previous-token head: a measured previous-token -> induction path."
                    if sp["sender"] == p["name"] else f", not the previous-token head {p['name']}."))
    return text
