"""IOI prompts and the off-by-one test of the paper's Appendix H (Fig. 13), for Mamba models.

Templated sentences, the frame of the paper's example ("Then, Brandon and Mark went to the
hospital. Mark gave a computer to" -> Brandon)::

    [BOS] Then, [IO] and [S1] went to the [PLACE]. [S2] gave a [OBJECT] to   -> [IO]

The frame's pieces are encoded one by one (each starts at a word boundary, where the byte-level
BPE's pre-tokenizer splits anyway) and the slots are filled with token ids: a name, place or
object is usable when the tokenizer encodes it, with its leading space, as ONE token, so every
prompt has the same length and the same slot positions. Names, places and objects are drawn per
prompt (IO != S). This needs at least ``MIN_NAMES`` one-token names (the GPT-NeoX BPE of the
paper preset has them); places / objects fall back to the paper's words, fixed, when none is
one token. Otherwise (e.g. the toy zoo's small BPE) the prompts fall back to a random-token frame
(:func:`random_frame_prompts`: one random id per frame word, the same frame for every prompt,
IO and S random ids) and the reason is stated in the table and the report.

Corruption (as the paper): [IO'][S']...[S']..., both names replaced everywhere (other slots kept).
Metric, per prompt: logit(IO) - logit(S) at the last position, and each of logit(IO), logit(S)
(the paper's Fig. 13 shows the IO and S changes side by side), patched minus clean. Every
layer's SSM input c is patched at every position, corrupted -> clean, its influence reaching the
logits through every path except other layers' SSM states (App. H.2), which stay clean.
"""
from __future__ import annotations

import numpy as np
import torch

from universality.circuits.effects import Effects
from universality.circuits.induction import batches
from universality.circuits.patching import SCAN_INPUTS, Patch, final_logits, path_patch, ssm_states

__all__ = ["FRAME", "TEMPLATE", "NAMES", "MIN_NAMES", "ioi_prompts", "random_frame_prompts",
           "templated_prompts", "ioi_experiment", "summarise_ioi", "METRICS"]

#: The paper's example sentence (Fig. 13), one slot per word; IO, S1, S2 are the name slots.
FRAME = ("Then", ",", "IO", "and", "S1", "went", "to", "the", "hospital", ".", "S2", "gave", "a",
         "computer", "to")
#: The templated sentence: text pieces and slots ({IO}, {S}, {PLACE}, {OBJECT}).
TEMPLATE = ("Then", ",", " {IO}", " and", " {S}", " went", " to", " the", " {PLACE}", ".", " {S}",
            " gave", " a", " {OBJECT}", " to")
#: Candidate names (common English first names, as in Wang et al. 2023's IOI data set).
NAMES = ("Mary", "John", "Alice", "Bob", "Brandon", "Mark", "James", "Michael", "David", "Sarah", "Laura",
         "Daniel", "Paul", "Kevin", "Lisa", "Anna", "Emily", "Jessica", "Thomas", "Richard", "Susan",
         "Karen", "Steven", "Andrew", "Robert", "William", "Joseph", "Charles", "George", "Edward",
         "Jennifer", "Linda", "Patricia", "Elizabeth", "Nancy", "Helen", "Peter", "Frank", "Scott",
         "Eric", "Amy", "Rachel", "Kate", "Tom", "Sam", "Adam", "Ryan", "Jason", "Justin", "Henry")
PLACES = ("hospital", "store", "school", "park", "station", "restaurant", "office", "garden", "library",
          "market", "house", "church")
OBJECTS = ("computer", "book", "bottle", "ring", "basketball", "necklace", "drink", "snack", "bag",
           "phone", "letter", "cake")
#: One-token names needed for templated prompts.
MIN_NAMES = 8
#: The three per-prompt metrics (``metric`` column of the table).
METRICS = ("io_minus_s", "io", "s")
_SLOTS = {"{IO}": "IO", "{S}": "S", "{PLACE}": "PLACE", "{OBJECT}": "OBJECT"}


def random_frame_prompts(n: int, vocab: int, bos: int, seed: int, reason: str = "") -> dict:
    """``n`` prompts [n, 1 + len(FRAME)] int64 with a random-token frame (module docstring).

    Returns ``{"clean", "corrupt", "io", "s", "labels", "templated": False, "reason", "example"}``;
    ``labels[p]`` names position p (``BOS``, frame words, ``IO``, ``S1``, ``S2``).
    """
    ids = np.array([t for t in range(vocab) if t != bos], dtype=np.int64)
    words = sorted({w for w in FRAME if w not in ("IO", "S1", "S2")})
    if len(ids) < len(words) + 4:
        raise ValueError(f"vocabulary of {vocab} ids is too small for IOI-style prompts")
    rng = np.random.default_rng([seed, 101])
    frame = dict(zip(words, rng.choice(ids, size=len(words), replace=False)))
    pool = ids[~np.isin(ids, list(frame.values()))]
    labels = ["BOS", *FRAME]
    clean = np.empty((n, len(labels)), dtype=np.int64)
    corrupt = np.empty_like(clean)
    io, s = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        io[i], s[i], io_, s_ = rng.choice(pool, size=4, replace=False)
        for row, (a, b) in ((clean, (io[i], s[i])), (corrupt, (io_, s_))):
            row[i] = [bos] + [a if w == "IO" else b if w in ("S1", "S2") else frame[w] for w in FRAME]
    return {"clean": torch.from_numpy(clean), "corrupt": torch.from_numpy(corrupt), "io": torch.from_numpy(io),
            "s": torch.from_numpy(s), "labels": labels, "templated": False, "reason": reason,
            "example": " ".join(labels[1:])}


def _one_token(tok, words, vocab: int, bos: int) -> dict[str, int]:
    """{word: id} of the words the tokenizer encodes, with a leading space, as one id < vocab."""
    out = {}
    for w in words:
        ids = tok.encode(" " + w, add_special_tokens=False).ids
        # the decode check keeps an unknown-word id from counting as the word
        if len(ids) == 1 and ids[0] < vocab and ids[0] != bos and tok.decode(ids).strip() == w:
            out[w] = ids[0]
    return out


def templated_prompts(n: int, tok, vocab: int, bos: int, seed: int) -> dict:
    """``n`` templated IOI prompts (module docstring); the fallback when fewer than
    ``MIN_NAMES`` names are one token. Same return keys as :func:`random_frame_prompts`."""
    names = _one_token(tok, NAMES, vocab, bos)
    if len(names) < MIN_NAMES:
        probe = next((w for w in NAMES if w not in names), NAMES[0])
        k = len(tok.encode(" " + probe, add_special_tokens=False).ids)
        reason = (f"the tokenizer encodes {len(names)} of {len(NAMES)} candidate names as one token "
                  f"(' {probe}' -> {k} tokens); templated sentences need {MIN_NAMES}")
        return random_frame_prompts(n, vocab, bos, seed, reason)
    fill = {"PLACE": _one_token(tok, PLACES, vocab, bos), "OBJECT": _one_token(tok, OBJECTS, vocab, bos)}
    pieces, labels = [], ["BOS"]        # pieces: fixed id lists or a slot name
    seen_s = 0
    for piece in TEMPLATE:
        slot = _SLOTS.get(piece.strip())
        if slot in ("PLACE", "OBJECT") and not fill[slot]:       # fixed: the paper's word, any length
            slot, piece = None, " " + ("hospital" if slot == "PLACE" else "computer")
        if slot:
            seen_s += slot == "S"
            pieces.append(slot)
            labels.append("S1" if slot == "S" and seen_s == 1 else "S2" if slot == "S" else slot)
        else:
            ids = tok.encode(piece, add_special_tokens=False).ids
            pieces.append(ids)
            labels += [tok.decode([i]) for i in ids]
    rng = np.random.default_rng([seed, 103])
    name_ids = np.array(sorted(names.values()))
    rows = {"clean": [], "corrupt": []}
    io, s = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        io[i], s[i], io_, s_ = rng.choice(name_ids, size=4, replace=False)
        other = {k: int(rng.choice(sorted(v.values()))) for k, v in fill.items() if v}
        for kind, (a, b) in (("clean", (io[i], s[i])), ("corrupt", (io_, s_))):
            row = [bos]
            for piece in pieces:
                row += piece if isinstance(piece, list) else [{"IO": a, "S": b}.get(piece, other.get(piece))]
            rows[kind].append(row)
    clean = torch.tensor(rows["clean"], dtype=torch.int64)
    return {"clean": clean, "corrupt": torch.tensor(rows["corrupt"], dtype=torch.int64),
            "io": torch.from_numpy(io), "s": torch.from_numpy(s), "labels": labels, "templated": True,
            "reason": f"{len(names)} of {len(NAMES)} names are one token", "example": tok.decode(clean[0, 1:].tolist())}


def ioi_prompts(n: int, vocab: int, bos: int, seed: int, tok=None) -> dict:
    """Templated prompts when a tokenizer is given and has the names; else the random frame."""
    if tok is None:
        return random_frame_prompts(n, vocab, bos, seed, "no tokenizer given")
    return templated_prompts(n, tok, vocab, bos, seed)


def _metrics(logits: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    a, b = logits.gather(1, io[:, None])[:, 0].double(), logits.gather(1, s[:, None])[:, 0].double()
    return {"io_minus_s": a - b, "io": a, "s": b}


@torch.no_grad()
def ioi_experiment(model, prompts: dict, batch_size: int = 32, effects: Effects | None = None,
                   progress=None) -> Effects:
    """c patched per (layer, position >= 1): table ``ioi``, one row per (layer, position, metric)
    with ``token`` (the position's label); ``distance`` 0 marks the one prompt set."""
    effects = effects or Effects()
    L, labels = model.n_layers, prompts["labels"]
    device = next(model.parameters()).device
    resid = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    names = [f"blocks.{l}.mixer.{n}" for l in range(L) for n in SCAN_INPUTS]
    for sl in batches(len(prompts["clean"]), batch_size):
        clean_ids, corrupt_ids, io, s = (prompts[k][sl].to(device) for k in ("clean", "corrupt", "io", "s"))
        lc, clean = final_logits(model, clean_ids, names + resid)
        lx, corrupt = final_logits(model, corrupt_ids, names)
        states = {l: ssm_states(model, clean, l) for l in range(L)}
        base, full = _metrics(lc, io, s), _metrics(lx, io, s)
        for layer in range(L):
            site = f"blocks.{layer}.mixer.hook_ssm_in"
            frozen = {m: states[m] for m in range(layer + 1, L)}
            for pos in range(1, len(labels)):
                out = path_patch(model, clean_ids, [Patch(site, corrupt[site], (slice(None), pos))],
                                 states=frozen, start=layer, resid=clean[resid[layer]])
                got = _metrics(out, io, s)
                for m in METRICS:
                    key = {"distance": 0, "layer": layer, "position": pos, "token": labels[pos], "metric": m}
                    effects.add("ioi", key, base[m], full[m], got[m])
                if progress:
                    progress()
    return effects


def summarise_ioi(effects: Effects, prompts: dict) -> dict:
    """Where patching c moves logit(IO) - logit(S) most, how often that position wins across
    resamples (at the peak layer, by |effect|), and the off-by-one read: for each name slot the
    largest |change| over layers at the slot and at the token after it."""
    t = effects.table("ioi")
    diff = t[t.metric == "io_minus_s"]
    top = diff.loc[diff.logit_diff.abs().idxmax()]
    w = effects.wins("ioi", "position", {"layer": int(top.layer), "metric": "io_minus_s"}, absolute=True)
    labels = prompts["labels"]
    peak = diff.groupby("position").logit_diff.apply(lambda v: float(v.abs().max()))
    slots, reads = {}, []
    for slot in ("IO", "S1", "S2"):
        if slot in labels and labels.index(slot) + 1 < len(labels):
            q = labels.index(slot)
            slots[slot] = {"at": peak.get(q, 0.0), "after": peak.get(q + 1, 0.0), "after_token": labels[q + 1]}
            reads.append(f"{slot} {slots[slot]['at']:.2f} vs '{labels[q + 1]}' after it {slots[slot]['after']:.2f}")
    later = sum(v["after"] > v["at"] for v in slots.values())
    verdict = (f"Off-by-one (largest |change| over layers, at each name vs the token after it): {'; '.join(reads)}; "
               f"the token after the name dominates for {later} of {len(slots)} name slots"
               + (" (the paper: always the token after IO or S)." if later < len(slots) else ", as in the paper."))
    return {"peak_layer": int(top.layer), "peak_token": str(top.token), "peak_position": int(top.position),
            "peak_logit_diff": float(top.logit_diff), "peak_ci": [float(top.ci_low), float(top.ci_high)],
            "peak_share": w["share"][str(int(top.position))],
            "tokens_by_effect": [labels[p] for p in peak.sort_values(ascending=False).index[:5]],
            "corrupt_logit_diff": float(diff.corrupt_logit_diff.iloc[0]),
            "clean_logit_diff": float(diff.clean_logit.iloc[0]), "slots": slots, "off_by_one": verdict,
            "templated": bool(prompts["templated"]),
            "fallback_reason": "" if prompts["templated"] else prompts["reason"], "example": prompts["example"]}

