"""RWKV induction circuits: the Mamba state experiments carried to the WKV state (beyond the paper).

Prompts, corruptions and metric are those of :mod:`universality.circuits.ssm_paths`
(``[BOS] prefix [A][B] ... [A]``; ``[A][B']...[A]`` = "B'", ``[A'][B]...[A]`` = "A'"; the clean
answer B's logit at the last position, patched - clean, per prompt; bootstrap intervals from
:class:`universality.circuits.effects.Effects`). Direction: corrupted -> clean.

RWKV-4's layer l keeps a WKV state per channel, (num, den, max) in max-normalised form
(:mod:`universality.models.wkv`): the state AFTER position t is what y_{t+1} reads, so the last
position T-1 (the final [A], A2) reads the state after T-2, ``READ = -2`` below. Besides that
state, y_{A2} reads only its own k, v (the bonus term e^{u + k} v) and its receptance.

``state`` (the paper's Table 1 definition for Mamba, carried to RWKV): layer l's WKV state read
    at A2 (after T-2) takes its corrupted value; every other state of every layer stays clean
    (later layers' states frozen at the clean run's); the rest of the network (token shift,
    receptance, channel mix, the residual stream, the bonus term) is recomputed.
``state_all_positions`` (broader, the "all positions" variant): layer l's states at EVERY
    position take their corrupted values (so layer l's output changes wherever its wkv reads a
    changed state), other layers' states frozen clean.
``kv_in`` (the RWKV analogue of Mamba's ``ssm_in``, Table 2): layer l's key k_i and/or value
    v_i (``patched``: "kv" both, "k", "v" alone) at one position i (A1, B1, B1+1..B1+3) take
    their corrupted values on their path INTO the WKV state only: the state is re-run from i
    with them, and the state read at A2 is the one that results; y_i's bonus term, the states
    read before A2 and everything else stay clean; that state then reaches the logits as in
    ``state``. B1 vs B1+1 is the off-by-one question: RWKV's token shift mixes x_{t-1} into
    k_t and v_t, so B's identity can be written into the state at B1 (its own k, v) or at B1+1
    (through the shift).

The key layer is the layer whose read state lowers B's logit most under B' (mean over
distances), with its bootstrap win share (:func:`summarise_rwkv`).
"""
from __future__ import annotations

import torch

from universality.circuits.effects import Effects
from universality.circuits.induction import A_, B_, CORRUPTIONS, POSITIONS, Prompts, answer_logit, batches
from universality.circuits.patching import Patch, final_logits, patched_final_logits
from universality.models import registry
from universality.models.rwkv import state_hook_names

__all__ = ["EXACT", "BROADER", "KV_PARTS", "READ", "table_names", "kv_read_state", "rwkv_experiments",
           "summarise_rwkv", "describe_rwkv"]

EXACT = ("state", "kv_in")
BROADER = ("state_all_positions",)
#: What a ``kv_in`` row patches: k and v together, or one alone.
KV_PARTS = {"kv": ("hook_key", "hook_value"), "k": ("hook_key",), "v": ("hook_value",)}
#: Position of the state the last position reads (module docstring).
READ = -2


def table_names(broader: bool) -> tuple[str, ...]:
    """The tables of a ``circuits_wkv`` job (``circuits/{model}/{name}.csv``), in this order."""
    return EXACT + (BROADER if broader else ())


def _att(layer: int, hook: str) -> str:
    return f"blocks.{layer}.att.{hook}"


def kv_read_state(model, layer: int, clean: dict, source: dict, positions, parts=KV_PARTS["kv"]) -> tuple:
    """Layer ``layer``'s WKV state read at the last position (after T-2), (num, den, max) [batch, C]
    each, when its k and/or v (``parts``, hook names) at ``positions`` (an int or a list, all
    <= T-2) take ``source``'s values, on their path into the state only; ``clean`` and ``source``
    map the layer's sites to [batch, pos, C] (caches of the clean and the corrupted run).

    The real state is linear in the writes e^{k_i} v_i (module docstring of models.wkv), so the
    change is a sum over the patched positions, each decayed by e^{(T-2-i) w}; computed in float64
    in the max-normalised form with the new max, so that every exponent is <= 0."""
    names = state_hook_names(layer)
    num, den, mx = (clean[n][:, READ].double() for n in names)
    w = -torch.exp(model.rwkv.blocks[layer].attention.time_decay.double())
    k0, v0 = clean[_att(layer, "hook_key")].double(), clean[_att(layer, "hook_value")].double()
    k1 = (source if "hook_key" in parts else clean)[_att(layer, "hook_key")].double()
    v1 = (source if "hook_value" in parts else clean)[_att(layer, "hook_value")].double()
    last = k0.shape[1] + READ
    pos = [positions] if isinstance(positions, int) else list(positions)
    lag = {i: (last - i) * w for i in pos}
    new = torch.maximum(mx, torch.stack([lag[i] + k1[:, i] for i in pos]).amax(0))
    num, den = num * torch.exp(mx - new), den * torch.exp(mx - new)
    for i in pos:
        e1, e0 = torch.exp(lag[i] + k1[:, i] - new), torch.exp(lag[i] + k0[:, i] - new)
        num, den = num + e1 * v1[:, i] - e0 * v0[:, i], den + e1 - e0
    dtype = clean[names[0]].dtype
    return num.to(dtype), den.to(dtype), new.to(dtype)


class _Batch:
    """One batch's clean run: B's logit and the cache (block inputs, k, v, WKV states of every layer)."""

    def __init__(self, model, p: Prompts, sl: slice):
        self.model, self.p, self.n = model, p, model.n_layers
        device = next(model.parameters()).device
        self.ids, self.answer = p.clean[sl].to(device), p.answer[sl].to(device)
        self.sl, self.device = sl, device
        self.names = [n for l in range(self.n) for n in (f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_resid_mid",
                                                         _att(l, "hook_key"), _att(l, "hook_value"),
                                                         *state_hook_names(l))]
        logits, self.cache = final_logits(model, self.ids, self.names)
        self.logit = answer_logit(logits, self.answer)
        self.read = self.ids.shape[1] + READ
        # Block l's input: block 0 applies pre_ln BEFORE its hook_resid_pre, so its input is the
        # embedding (re-running block 0 from hook_resid_pre would normalise twice; the two-position
        # window of run_read re-runs pre_ln on the window, which is per position: exact).
        self.inputs = [registry.arch_of(model).embed(model, self.ids)]
        self.inputs += [self.cache[f"blocks.{l}.hook_resid_pre"] for l in range(1, self.n)]

    def corrupt(self, corr: str) -> tuple[torch.Tensor, dict]:
        """(B's logit [b], cache of the same sites) of the corrupted run."""
        logits, cache = final_logits(self.model, self.p.corrupt[corr][self.sl].to(self.device), self.names)
        return answer_logit(logits, self.answer), cache

    def run_all(self, layer: int, states: tuple) -> torch.Tensor:
        """B's logit when layer ``layer``'s states at EVERY position take ``states`` (three
        [b, pos, C]), every later layer's states frozen clean; the blocks before ``layer`` are not
        re-run (their clean outputs are cached)."""
        patches = [Patch(n, s) for n, s in zip(state_hook_names(layer), states)]
        patches += [Patch(n, self.cache[n]) for m in range(layer + 1, self.n) for n in state_hook_names(m)]
        out = patched_final_logits(self.model, None, patches, start=layer, resid=self.inputs[layer])
        return answer_logit(out, self.answer)

    def run_read(self, layer: int, *reads: tuple) -> list[torch.Tensor]:
        """B's logit [b] for each ``read`` (three [b, C]): layer ``layer``'s state read at the
        last position, every other state of every layer clean. The reads run as one batch.

        Only the last position's activations change, and it reads the position before it through
        the state and the token shifts. So blocks ``layer``.. run on the last two positions, with
        position T-2 held at its clean values (block inputs, resid_mid, the states after T-2;
        layer ``layer``'s state there replaced by ``read``): exact, and 2/pos of a full pass
        (tested against the float64 loop)."""
        copies = len(reads)

        def win(t):
            return t[:, -2:].repeat(copies, *([1] * (t.dim() - 1)))

        first = (slice(None), 0)
        patches = []
        for m in range(layer, self.n):
            site = [f"blocks.{m}.hook_resid_mid"] + ([f"blocks.{m}.hook_resid_pre"] if m > layer else [])
            patches += [Patch(n, win(self.cache[n]), first) for n in site]
            for i, n in enumerate(state_hook_names(m)):
                value = win(self.cache[n])
                if m == layer:
                    value[:, 0] = torch.cat([r[i] for r in reads])
                patches.append(Patch(n, value, first))
        out = patched_final_logits(self.model, None, patches, start=layer, resid=win(self.inputs[layer]))
        return list(answer_logit(out, self.answer.repeat(copies)).chunk(copies))


def _tables(b: _Batch, corr: str, effects: Effects, broader: bool, progress) -> None:
    x_logit, cache = b.corrupt(corr)
    d, a1 = b.p.distance, b.p.a1
    for layer in range(b.n):
        key = {"distance": d, "layer": layer, "corruption": corr}
        bad = tuple(cache[n] for n in state_hook_names(layer))
        effects.add("state", key, b.logit, x_logit, b.run_read(layer, tuple(s[:, READ] for s in bad))[0])
        if broader:
            effects.add("state_all_positions", key, b.logit, x_logit, b.run_all(layer, bad))
        rows = [({"distance": d, "layer": layer, "position": label, "patched": part, "corruption": corr},
                 kv_read_state(b.model, layer, b.cache, cache, a1 + off, hooks))
                for label, off in POSITIONS.items() if a1 + off <= b.read      # later writes miss the read state
                for part, hooks in KV_PARTS.items()]
        for (row, _), logit in zip(rows, b.run_read(layer, *(r for _, r in rows))):
            effects.add("kv_in", row, b.logit, x_logit, logit)
        if progress:
            progress()


@torch.no_grad()
def rwkv_experiments(model, prompts: list[Prompts], batch_size: int = 32, effects: Effects | None = None,
                     broader: bool = True, progress=None) -> Effects:
    """Every RWKV table (``EXACT``; ``BROADER`` too when ``broader``), every layer, both
    corruptions, for prompt sets of any distances. Returns the per-prompt ``Effects``."""
    effects = effects or Effects()
    for p in prompts:
        for sl in batches(len(p.clean), batch_size):
            b = _Batch(model, p, sl)
            for corr in CORRUPTIONS:
                _tables(b, corr, effects, broader, progress)
    return effects


def summarise_rwkv(effects: Effects) -> dict:
    """The key layer (lowest ``state`` effect under B'), where k/v carry B (B') and A (A') into
    its state, each with its bootstrap win share; every number a mean over distances."""
    state = effects.wins("state", "layer", {"corruption": B_})
    key = int(state["winner"])
    full = effects.table("state")
    full = {c: float(g.groupby("distance")["corrupt_logit_diff"].first().mean())
            for c, g in full.groupby("corruption")}
    kv = {c: effects.wins("kv_in", "position", {"corruption": c, "layer": key, "patched": "kv"})
          for c in CORRUPTIONS}
    parts = {c: {part: effects.wins("kv_in", "position", {"corruption": c, "layer": key, "patched": part})["mean"]
                 for part in KV_PARTS} for c in CORRUPTIONS}
    out = {
        "key_layer": key, "key_layer_share": state["share"][str(key)],
        "state_logit_diff_by_layer": state["mean"],
        "corrupt_logit_diff": full[B_], "corrupt_logit_diff_by_corruption": full,
        "key_layer_fraction": state["mean"][str(key)] / full[B_] if full[B_] else float("nan"),
        "kv_in_peak_position": {c: w["winner"] for c, w in kv.items()},
        "kv_in_peak_share": {c: w["share"][w["winner"]] for c, w in kv.items()},
        "kv_in_logit_diff_by_position": parts,          # {corruption: {"kv"|"k"|"v": {position: mean}}}
        "state": state, "kv_in": kv,
    }
    if effects.keys("state_all_positions"):
        out["state_all_positions_by_layer"] = effects.wins("state_all_positions", "layer", {"corruption": B_})["mean"]
    out["bootstrap"] = {"resamples": effects.n_boot, "level": effects.level, "seed": effects.seed}
    return out


def _ci(w: dict, c) -> str:
    lo, hi = w["ci"][str(c)]
    return f"{w['mean'][str(c)]:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def describe_rwkv(s: dict) -> str:
    """One paragraph stating the RWKV findings from a :func:`summarise_rwkv` summary (+ ``model``)."""
    k, st, kv = s["key_layer"], s["state"], s["kv_in"]
    others = ", ".join(f"L{l} {v:+.2f}" for l, v in st["mean"].items() if int(l) != k)
    pb, pa = s["kv_in_peak_position"][B_], s["kv_in_peak_position"][A_]
    off = ("one token after B1, through the token shift (an off-by-one as in Mamba)" if pb == "B1+1" else
           "at B1 itself (no off-by-one delay)" if pb == "B1" else f"at {pb}")
    split = s["kv_in_logit_diff_by_position"][B_]
    text = (f"{s['model']}: the key layer is {k} (lowest in {st['share'][str(k)]:.0%} of bootstrap resamples). "
            f"Patching its WKV state (num, den, max) read at the final [A], from [A][B']...[A], other layers' "
            f"states frozen, changes the logit of B by {_ci(st, k)} on average over distances "
            f"({s['key_layer_fraction']:.0%} of the full corruption's {s['corrupt_logit_diff']:+.2f}; other layers: "
            f"{others}). At layer {k}, B's key/value writes into the state matter most {off} (in "
            f"{kv[B_]['share'][pb]:.0%} of resamples): " + ", ".join(f"{p} {v:+.2f}" for p, v in split["kv"].items())
            + f"; k alone at {pb} {split['k'][pb]:+.2f}, v alone {split['v'][pb]:+.2f}. Under [A'][B]...[A] the "
            f"write that carries A peaks at {pa} ({kv[A_]['share'][pa]:.0%}; "
            + ", ".join(f"{p} {v:+.2f}" for p, v in s["kv_in_logit_diff_by_position"][A_]["kv"].items()) + ").")
    if "state_all_positions_by_layer" in s:
        text += (" Broader variant, layer's states at every position: "
                 + ", ".join(f"L{l} {v:+.2f}" for l, v in s["state_all_positions_by_layer"].items()) + ".")
    return text
