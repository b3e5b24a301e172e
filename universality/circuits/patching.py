"""Activation and path patching on any registered model with ``hook_points`` (MambaLM, NeoXLM, ...).

Path patching (Wang et al. 2023; Wang et al. 2024 Fig. 6) takes three forward passes:

1. the clean run, caching the clean values of the *frozen* sites;
2. the corrupted run, caching the corrupted values of the *sender* sites;
3. the clean input again, with every sender replaced by its corrupted value and every frozen site
   held at its clean value. The sender's effect reaches the logits through every path except
   those that pass through a frozen site.

Direction used throughout: corrupted values are patched INTO the clean run (so a component that
carries the answer makes the clean answer's logit drop). Activation patching is the special case
with no frozen sites.

A :class:`Patch` names a site, the source tensor and where to write it: ``index`` selects the
patched elements of the site's tensor (``(slice(None), 5)`` = position 5 of every prompt in a
[batch, pos, ...] site; ``(slice(None), slice(None), 2)`` = head 2 of a [batch, pos, head, ...]
site); None replaces the whole tensor.

Mamba SSM states: replacing layer l's states h at EVERY position (a state sender patched whole,
or a layer frozen to its clean states) needs no recurrence, since y_t = <h_t, C_t> + D * c_t reads
the states only through that sum. :func:`state_override_hooks` does exactly that at
``hook_ssm_out`` with the run's own C and c, which equals writing ``hook_state`` whole (tested)
but skips materialising states and the per-position re-run that a ``hook_state`` patch costs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from universality.core.hooks import hooks, run_with_cache
from universality.models import registry
from universality.models.scan import selective_scan
from universality.models.ssm_states import states_to_output

__all__ = ["Patch", "final_logits", "patched_final_logits", "path_patch", "state_override_hooks",
           "SCAN_INPUTS", "ssm_states", "capture_block", "final_state_logits", "conv_window"]

#: Mixer sites from which a layer's SSM states follow (``ssm_states``).
SCAN_INPUTS = ("hook_ssm_in", "hook_delta", "hook_B", "hook_C")


@dataclass(frozen=True)
class Patch:
    """Write ``value[index]`` into the site ``name`` (``index`` None: the whole tensor)."""

    name: str
    value: torch.Tensor
    index: Any = None

    def __call__(self, t: torch.Tensor, _name: str) -> torch.Tensor:
        if self.value.shape != t.shape:
            raise ValueError(f"patch for {self.name}: source shape {tuple(self.value.shape)} "
                             f"!= site shape {tuple(t.shape)}")
        if self.index is None:
            return self.value.to(t.dtype)
        out = t.clone()
        out[self.index] = self.value[self.index].to(t.dtype)
        return out


@torch.no_grad()
def final_logits(model, ids: torch.Tensor, names: Iterable[str] = ()) -> tuple[torch.Tensor, dict]:
    """Logits at the last position [batch, vocab] float32 and the cache of ``names``."""
    logits, cache = run_with_cache(model, ids, list(names))
    return logits[:, -1].float(), cache


def ssm_states(model, cache: dict, layer: int) -> torch.Tensor:
    """Mamba layer ``layer``'s SSM states h [batch, pos, d_inner, d_state] from a cache of its
    ``SCAN_INPUTS`` (the same scan the layer ran; cheaper than recording ``hook_state``, whose
    hook path copies and compares the whole state tensor)."""
    pre = f"blocks.{layer}.mixer."
    u, delta, B, C = (cache[pre + n] for n in SCAN_INPUTS)
    A = -torch.exp(model.backbone.layers[layer].mixer.A_log.float())
    # Contiguous once here: each state override reads it again in an einsum.
    return selective_scan(u, delta, A, B, C, None, return_states=True)[1].contiguous()


def state_override_hooks(model, states: dict[int, torch.Tensor]) -> dict[str, list]:
    """Hooks that give Mamba layer l the SSM states ``states[l]`` [batch, pos, d_inner, d_state]
    at every position: y = <h, C> + D * c with this run's C and c (see the module docstring)."""
    fns: dict[str, list] = {}
    for layer, h in states.items():
        mixer = model.backbone.layers[layer].mixer
        seen: dict[str, torch.Tensor] = {}
        pre = f"blocks.{layer}.mixer."

        def keep(t, name, seen=seen):
            seen[name.rsplit(".", 1)[1]] = t

        def output(t, _name, seen=seen, h=h, D=mixer.D):
            return states_to_output(h, seen["hook_C"], seen["hook_ssm_in"], D.float()).to(t.dtype)

        fns.setdefault(pre + "hook_ssm_in", []).append(keep)
        fns.setdefault(pre + "hook_C", []).append(keep)
        fns.setdefault(pre + "hook_ssm_out", []).append(output)
    return fns


def _embed(model, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings [batch, pos, d_model] (the input of block 0)."""
    return registry.arch_of(model).embed(model, ids)


def _last_logits(model, resid: torch.Tensor, start: int) -> torch.Tensor:
    """Run blocks ``start``.. on resid [batch, pos, d_model]; logits of the LAST position only.

    Same operations as the models' ``forward`` (which unembeds every position: ~40% of a toy
    Mamba's forward), so the result equals ``model(ids)[:, -1]``.
    """
    arch = registry.arch_of(model)
    return arch.unembed(model, arch.run_blocks(model, resid, start)[:, -1])


@torch.no_grad()
def patched_final_logits(model, ids: torch.Tensor, patches: Iterable[Patch],
                         states: dict[int, torch.Tensor] | None = None, start: int = 0,
                         resid: torch.Tensor | None = None) -> torch.Tensor:
    """Last-position logits [batch, vocab] of a run on ``ids`` with ``patches`` applied.

    Several patches may target one site; they are applied in the order given (before any state
    override). ``states`` = ``{layer: h}`` replaces Mamba layers' SSM states whole
    (:func:`state_override_hooks`). ``start`` > 0 skips blocks before it, starting from
    ``resid``, the input of block ``start`` [batch, pos, d_model] cached from a run on ``ids``
    (exact when no patch touches an earlier block).
    """
    fns: dict[str, list] = {}
    for p in patches:
        fns.setdefault(p.name, []).append(p)
    for name, fs in state_override_hooks(model, states or {}).items():
        fns.setdefault(name, []).extend(fs)
    if start and resid is None:
        raise ValueError(f"start={start} needs the cached input of block {start} (resid)")
    with hooks(model, fns):
        return _last_logits(model, _embed(model, ids) if resid is None else resid, start)


def path_patch(model, clean_ids: torch.Tensor, senders: Iterable[Patch] = (),
               frozen: dict[str, torch.Tensor] | None = None,
               states: dict[int, torch.Tensor] | None = None, start: int = 0,
               resid: torch.Tensor | None = None) -> torch.Tensor:
    """The third pass: clean input, ``senders`` patched in, ``frozen`` sites held at clean values.

    Args:
        senders: patches carrying corrupted values (from pass 2).
        frozen: ``{site: clean value}`` (from pass 1), replaced whole.
        states: ``{layer: SSM states}`` written whole into Mamba layers, e.g. the sender
            layer's corrupted states and the other layers' clean states (frozen).
        start, resid: skip the blocks before ``start`` (unpatched, so they compute their clean
            values), starting from their cached clean output ``resid`` (see patched_final_logits).

    Returns:
        last-position logits [batch, vocab] float32.
    """
    senders, frozen = list(senders), frozen or {}
    clash = {p.name for p in senders} & set(frozen)
    if clash:
        raise ValueError(f"sites both patched and frozen: {sorted(clash)}")
    return patched_final_logits(model, clean_ids, senders + [Patch(n, v) for n, v in frozen.items()],
                                states, start, resid)


class _Stop(Exception):
    """Raised by :func:`capture_block` after the block it runs (the later blocks are not needed)."""


@torch.no_grad()
def capture_block(model, resid: torch.Tensor, layer: int, names: Iterable[str],
                  patches: Iterable[Patch] = ()) -> dict[str, torch.Tensor]:
    """Run block ``layer`` alone on its input ``resid`` [batch, pos, d_model] with ``patches``
    applied and return the values of the named sites of that block (as they left the site)."""
    seen: dict[str, torch.Tensor] = {}
    fns: dict[str, list] = {}
    for p in patches:
        fns.setdefault(p.name, []).append(p)

    def keep(t, name):
        seen[name] = t.detach().clone()

    def stop(_t, _name):
        raise _Stop

    for n in names:
        fns.setdefault(n, []).append(keep)
    fns.setdefault(f"blocks.{layer}.hook_resid_post", []).append(stop)
    try:
        with hooks(model, fns):
            registry.arch_of(model).run_blocks(model, resid, layer)
    except _Stop:
        pass
    missing = set(names) - set(seen)
    if missing:
        raise KeyError(f"sites {sorted(missing)} are not in block {layer}")
    return seen


def conv_window(model) -> int:
    """Positions a Mamba layer's output at t reads besides its state: t-K+1..t (conv width K)."""
    return max(int(block.mixer.d_conv) for block in model.backbone.layers)


@torch.no_grad()
def final_state_logits(model, cache: dict, states: dict[int, torch.Tensor], layer: int,
                       h_last: torch.Tensor) -> torch.Tensor:
    """Last-position logits [batch, vocab] when Mamba layer ``layer``'s SSM state at the LAST
    position is ``h_last`` [batch, d_inner, d_state] and every other state of every layer keeps
    its clean value (``states`` {l: clean states [batch, pos, d_inner, d_state]}; ``cache``
    holds the clean ``blocks.{l}.hook_resid_pre``).

    The patch changes layer ``layer``'s output at the last position only, and with the later
    layers' states frozen only the last position of their inputs changes. So the blocks
    ``layer``.. run on the last K positions (K = the conv width, what the last output reads)
    with their inputs held at the clean values before the last position: exact, and K/pos of
    the cost of a full-length third pass (tested equal to ``path_patch`` with the same states).
    """
    n, k = model.n_layers, conv_window(model)
    k = min(k, next(iter(states.values())).shape[1])
    window = (slice(None), slice(-k, None))
    h = states[layer][window].clone()
    h[:, -1] = h_last.to(h.dtype)
    over = {layer: h, **{m: states[m][window] for m in range(layer + 1, n)}}
    hold = [Patch(f"blocks.{m}.hook_resid_pre", cache[f"blocks.{m}.hook_resid_pre"][window],
                  (slice(None), slice(0, k - 1))) for m in range(layer + 1, n)]
    return patched_final_logits(model, None, hold, over, start=layer,
                                resid=cache[f"blocks.{layer}.hook_resid_pre"][window])
