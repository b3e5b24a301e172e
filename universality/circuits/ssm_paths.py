"""Mamba induction circuits: the paper's four path-patching experiments (Sec. 6.1, App. G).

Prompts and corruptions: :mod:`universality.circuits.induction` (``[A][B']...[A]`` = "B'",
``[A'][B]...[A]`` = "A'"). Metric: the clean answer B's logit at the final [A] (A2, the last
position), patched - clean, per prompt; tables give the mean over prompts with a bootstrap
interval (:class:`universality.circuits.effects.Effects`). Direction: corrupted -> clean.

The paper's definitions (the default tables; both corruptions are measured, the paper shows B'
for Tables 1-3 and A' for Table 4):

``state`` (Table 1): layer l's SSM state h at A2 only takes its corrupted value; the effect
    reaches the logits through everything except the other layers' SSM states, which stay
    clean (their C read-out, the D skip, the gate and the residual stream are recomputed).
``ssm_in`` (Table 2): the SSM input c of layer l at one position i (A1, B1, B1+1..B1+3) takes
    its corrupted value on its paths INTO the state only: c_i enters h_i as the scan input and
    through the step size delta_i and B_i, which the mixer computes from c_i alone; the state
    the final [A] reads, h at A2, is recomputed (the recurrence carries the change from i to
    A2), and reaches the logits as in ``state``. C_i (the read-out at i), the D * c_i skip and
    h at positions before A2 stay clean.
``conv_in`` (Tables 3, 4): the conv input x of the key layer at A1, B1 or B1+1 takes its
    corrupted value in c at B1+1 only (the paper: "we patch components of c_{B1+1}, a linear
    combination of x_{B1+1}, x_{B1}, x_{B1-1}, x_{B1-2}"), which then enters h as in ``ssm_in``.

The broader variants of the earlier pipeline stay under their own names:
``state_all_positions`` (layer l's states at every position), ``ssm_in_all_paths`` (c at one
position through every path: the D skip, C, later positions, later layers),
``conv_in_all_paths`` (x likewise); each with the other layers' states frozen as above.

The key layer (for ``conv_in``) is the layer whose last-position state lowers B's logit most
under B', mean over distances; :func:`summarise_mamba` reports how often it wins across
bootstrap resamples.
"""
from __future__ import annotations

import torch

from universality.circuits.effects import Effects
from universality.circuits.induction import A_, B_, CORRUPTIONS, POSITIONS, Prompts, answer_logit, batches
from universality.circuits.patching import (SCAN_INPUTS, Patch, capture_block, conv_window, final_logits,
                                            final_state_logits, path_patch, ssm_states)

__all__ = ["EXACT", "BROADER", "table_names", "paper_tables", "CONV_POSITIONS", "restricted_last_state", "mamba_experiments",
           "summarise_mamba"]

#: The paper's tables and the broader variants kept beside them (module docstring).
EXACT = ("state", "ssm_in", "conv_in")
BROADER = ("state_all_positions", "ssm_in_all_paths", "conv_in_all_paths")
#: Positions of the patched x (paper Tables 3-4); all feed the conv at B1+1.
CONV_POSITIONS = ("A1", "B1", "B1+1")
#: Where the paper's x patch enters: c at B1+1.
CONV_RECEIVER = "B1+1"
_U, _DELTA, _B = "hook_ssm_in", "hook_delta", "hook_B"


def table_names(broader: bool) -> tuple[str, ...]:
    """The tables of a ``circuits_ssm`` job (``circuits/{model}/{name}.csv``): the paper's, the
    broader variants when ``broader``, and the IOI table (:mod:`universality.circuits.ioi`)."""
    return EXACT + (BROADER if broader else ()) + ("ioi",)


def paper_tables() -> dict:
    """The paper's Mamba-130m App. G numbers (Tables 1-4), transcribed with their references and
    OCR notes (``circuits/data/paper_tables.json``)."""
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parent / "data" / "paper_tables.json").read_text())


def restricted_last_state(model, layer: int, scan: dict, states: torch.Tensor,
                          changes: dict[int, tuple]) -> torch.Tensor:
    """Layer ``layer``'s SSM state at the LAST position [batch, d_inner, d_state] when the scan
    inputs at some positions take other values, everything else clean.

    Args:
        scan: the clean ``{"hook_ssm_in": u, "hook_delta": delta}`` [batch, pos, d_inner] and
            ``{"hook_B": B}`` [batch, pos, d_state] of the layer.
        states: its clean states h [batch, pos, d_inner, d_state].
        changes: ``{position: (u, delta, B)}`` [batch, d_inner], [batch, d_inner], [batch, d_state].

    The recurrence h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t is re-run (float64) from the
    first to the last changed position; after it the inputs are clean, so the change decays to
    the last position by exp(A * sum of the later deltas): h_T' = h_T + exp(A sum delta) (h'_j - h_j).
    """
    A = -torch.exp(model.backbone.layers[layer].mixer.A_log.double())      # [d_inner, d_state]
    first, last = min(changes), max(changes)
    h = states[:, first - 1].double() if first > 0 else states.new_zeros(states[:, 0].shape, dtype=torch.float64)
    for t in range(first, last + 1):
        u, delta, B = changes.get(t) or (scan[_U][:, t], scan[_DELTA][:, t], scan[_B][:, t])
        u, delta, B = u.double(), delta.double(), B.double()
        h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None, :]
    decay = torch.exp(scan[_DELTA][:, last + 1:].double().sum(1)[..., None] * A)
    return (states[:, -1].double() + decay * (h - states[:, last].double())).to(states.dtype)


def _layer_scan(cache: dict, layer: int) -> dict:
    return {n: cache[f"blocks.{layer}.mixer.{n}"] for n in (_U, _DELTA, _B)}


class _Batch:
    """One batch's clean run and its caches (scan inputs, block inputs, SSM states of every layer)."""

    def __init__(self, model, p: Prompts, sl: slice, extra=()):
        self.model, self.p, self.n = model, p, model.n_layers
        device = next(model.parameters()).device
        self.ids, self.answer = p.clean[sl].to(device), p.answer[sl].to(device)
        self.sl, self.device = sl, device
        self.scan_names = [f"blocks.{l}.mixer.{s}" for l in range(self.n) for s in SCAN_INPUTS]
        names = self.scan_names + [f"blocks.{l}.hook_resid_pre" for l in range(self.n)] + list(extra)
        logits, self.cache = final_logits(model, self.ids, names)
        self.logit = answer_logit(logits, self.answer)
        self.states = {l: ssm_states(model, self.cache, l) for l in range(self.n)}

    def corrupt(self, corr: str, extra=(), states: bool = True):
        """(logit of B [b], cache, states {l: [b, pos, d, n]} or None) of the corrupted run."""
        logits, cache = final_logits(self.model, self.p.corrupt[corr][self.sl].to(self.device),
                                     (self.scan_names if states else []) + list(extra))
        h = {l: ssm_states(self.model, cache, l) for l in range(self.n)} if states else None
        return answer_logit(logits, self.answer), cache, h

    def frozen_run(self, layer: int, patches=(), states=None) -> torch.Tensor:
        """B's logit of a full third pass from block ``layer`` with later states frozen clean."""
        frozen = {m: self.states[m] for m in range(layer + 1, self.n)}
        out = path_patch(self.model, self.ids, list(patches), states={**frozen, **(states or {})},
                         start=layer, resid=self.cache[f"blocks.{layer}.hook_resid_pre"])
        return answer_logit(out, self.answer)

    def last_state_run(self, layer: int, h_last: torch.Tensor) -> torch.Tensor:
        """B's logit when only layer ``layer``'s state at A2 changes (``final_state_logits``)."""
        return answer_logit(final_state_logits(self.model, self.cache, self.states, layer, h_last), self.answer)


def _state_and_c(b: _Batch, corr: str, effects: Effects, broader: bool, progress) -> None:
    """Tables ``state`` and ``ssm_in`` (and their broader variants) of one batch and corruption."""
    x_logit, cache, states = b.corrupt(corr)
    d, a1 = b.p.distance, b.p.a1
    for layer in range(b.n):
        key = {"distance": d, "layer": layer, "corruption": corr}
        effects.add("state", key, b.logit, x_logit, b.last_state_run(layer, states[layer][:, -1]))
        if broader:
            effects.add("state_all_positions", key, b.logit, x_logit, b.frozen_run(layer, states={layer: states[layer]}))
        clean_scan, bad = _layer_scan(b.cache, layer), _layer_scan(cache, layer)
        for label, off in POSITIONS.items():
            pos = a1 + off
            row = {"distance": d, "layer": layer, "position": label, "corruption": corr}
            h = restricted_last_state(b.model, layer, clean_scan, b.states[layer],
                                      {pos: (bad[_U][:, pos], bad[_DELTA][:, pos], bad[_B][:, pos])})
            effects.add("ssm_in", row, b.logit, x_logit, b.last_state_run(layer, h))
            if broader:
                site = f"blocks.{layer}.mixer.{_U}"
                effects.add("ssm_in_all_paths", row, b.logit, x_logit,
                            b.frozen_run(layer, [Patch(site, cache[site], (slice(None), pos))]))
            if progress:
                progress()


def _conv(b: _Batch, corr: str, key: int, effects: Effects, broader: bool, progress) -> None:
    """Table ``conv_in`` (and ``conv_in_all_paths``) at the key layer for one batch and corruption."""
    site = f"blocks.{key}.mixer.hook_conv_in"
    x_logit, cache, _ = b.corrupt(corr, [site], states=False)
    a1, k = b.p.a1, conv_window(b.model)
    r = a1 + POSITIONS[CONV_RECEIVER]
    window = slice(r - k + 1, r + 1)            # what the conv at r reads
    resid = b.cache[f"blocks.{key}.hook_resid_pre"][:, window]
    names = [f"blocks.{key}.mixer.{n}" for n in (_U, _DELTA, _B)]
    for label in CONV_POSITIONS:
        pos = a1 + POSITIONS[label]
        row = {"distance": b.p.distance, "layer": key, "position": label, "corruption": corr}
        at = (slice(None), pos - window.start)
        seen = capture_block(b.model, resid, key, names, [Patch(site, cache[site][:, window], at)])
        h = restricted_last_state(b.model, key, _layer_scan(b.cache, key), b.states[key],
                                  {r: tuple(seen[n][:, -1] for n in names)})
        effects.add("conv_in", row, b.logit, x_logit, b.last_state_run(key, h))
        if broader:
            effects.add("conv_in_all_paths", row, b.logit, x_logit,
                        b.frozen_run(key, [Patch(site, cache[site], (slice(None), pos))]))
        if progress:
            progress()


@torch.no_grad()
def mamba_experiments(model, prompts: list[Prompts], batch_size: int = 32, effects: Effects | None = None,
                      broader: bool = True, key: int | None = None, progress=None) -> Effects:
    """Every Mamba table (``EXACT``; ``BROADER`` too when ``broader``) for prompt sets of any
    distances. ``state`` and ``ssm_in`` cover every layer and both corruptions (their broader
    variants B' only, as before); ``conv_in`` covers the key layer (from ``state`` unless ``key``
    is given) and both corruptions. Returns the per-prompt ``Effects`` (``.tables()``)."""
    effects = effects or Effects()
    for p in prompts:
        for sl in batches(len(p.clean), batch_size):
            b = _Batch(model, p, sl)
            for corr in CORRUPTIONS:
                _state_and_c(b, corr, effects, broader and corr == B_, progress)
    key = int(effects.wins("state", "layer", {"corruption": B_})["winner"]) if key is None else key
    for p in prompts:
        for sl in batches(len(p.clean), batch_size):
            b = _Batch(model, p, sl, [f"blocks.{key}.mixer.hook_conv_in"])
            for corr in CORRUPTIONS:
                _conv(b, corr, key, effects, broader, progress)
    return effects


def summarise_mamba(effects: Effects) -> dict:
    """The key layer and where the effect sits, each with its bootstrap win share, and the
    means for the report (every name below is a mean over distances)."""
    state = effects.wins("state", "layer", {"corruption": B_})
    key = int(state["winner"])
    full = effects.table("state")
    full = full[full.corruption == B_].groupby("distance")["corrupt_logit_diff"].first().mean()
    c = effects.wins("ssm_in", "position", {"corruption": B_, "layer": key})
    x = {corr: effects.wins("conv_in", "position", {"corruption": corr}) for corr in CORRUPTIONS}
    out = {
        "key_layer": key, "key_layer_share": state["share"][str(key)],
        "state_logit_diff_by_layer": state["mean"],
        "corrupt_logit_diff": float(full),
        "key_layer_fraction": state["mean"][str(key)] / float(full) if full else float("nan"),
        "ssm_in_peak_position": c["winner"], "ssm_in_peak_share": c["share"][c["winner"]],
        "ssm_in_logit_diff_by_position": c["mean"],
        "conv_in_peak_position": {corr: w["winner"] for corr, w in x.items()},
        "conv_in_peak_share": {corr: w["share"][w["winner"]] for corr, w in x.items()},
        "conv_in_logit_diff_by_position": {corr: w["mean"] for corr, w in x.items()},
        "state": state, "ssm_in": c, "conv_in": x,     # means, intervals, win shares (Effects.wins)
    }
    if effects.keys("state_all_positions"):
        broad = effects.wins("state_all_positions", "layer", {"corruption": B_})
        out["state_all_positions_by_layer"] = broad["mean"]
        out["ssm_in_all_paths_by_position"] = effects.wins("ssm_in_all_paths", "position",
                                                           {"corruption": B_, "layer": key})["mean"]
    out["bootstrap"] = {"resamples": effects.n_boot, "level": effects.level, "seed": effects.seed}
    return out
