"""The selective scan's float64 reference and the helpers that patch SSM states.

Shapes as in :mod:`universality.models.scan`: u, delta [batch, pos, d_inner], A [d_inner,
d_state], B, C [batch, pos, d_state], states h [batch, pos, d_inner, d_state].
``selective_scan_ref`` is the obviously correct loop the fast scan is tested against;
``propagate_state_patch`` re-runs the recurrence after a hook replaced some states (the
``hook_state`` site of :class:`universality.models.mamba.MambaLM`); ``states_to_output`` turns
states into the scan's output (the path patching of :mod:`universality.circuits.patching`).
"""
from __future__ import annotations

import torch

__all__ = ["selective_scan_ref", "states_to_output", "first_changed_position", "propagate_state_patch"]


def selective_scan_ref(u, delta, A, B, C, D=None, *, return_states: bool = False):
    """Obviously-correct reference: a float64 Python loop over positions (differentiable).

    Same arguments and shapes as ``selective_scan``; computes in float64 and returns float64.
    """
    u, delta, A, B, C = (x.double() for x in (u, delta, A, B, C))
    batch, L, d = u.shape
    h = u.new_zeros(batch, d, A.shape[1])
    ys, hs = [], []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)                                    # [b, d, n]
        dBu = delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]           # [b, d, n]
        h = dA * h + dBu
        ys.append((h * C[:, t, None, :]).sum(-1))                                 # [b, d]
        hs.append(h)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D.double()
    if return_states:
        return y, torch.stack(hs, dim=1)
    return y


def states_to_output(states, C, u=None, D=None):
    """y_t = <h_t, C_t> (+ D * u_t). states [b, pos, d, n], C [b, pos, n] -> [b, pos, d]."""
    y = torch.einsum("bldn,bln->bld", states, C.to(states.dtype))
    if D is not None:
        y = y + u.to(states.dtype) * D.to(states.dtype)
    return y


def first_changed_position(clean, patched) -> int | None:
    """First position where any element of ``patched`` differs from ``clean`` ([b, pos, ...])."""
    per_pos = (patched != clean).flatten(2).any(-1).any(0)   # [pos]
    if not bool(per_pos.any()):
        return None
    return int(per_pos.nonzero()[0, 0])


def propagate_state_patch(u, delta, A, B, clean, patched):
    """Re-run the recurrence after some states were replaced (used by the ``hook_state`` site).

    ``clean`` are the states the scan computed and ``patched`` is what a hook returned (both
    [batch, pos, d_inner, d_state]). Every ELEMENT where ``patched != clean`` is an override: the
    state there is set to the patched value. Every other element is recomputed from the
    (possibly patched) previous state, h_t = dA_t * h_{t-1} + dBu_t, so a patch at position t
    propagates causally to all later positions, and positions before the first override are
    left exactly as they were. The recurrence is diagonal in (d_inner, d_state), so per-element
    overrides are well defined.

    Caveat: an override whose value is bitwise equal to the clean value is indistinguishable
    from "no override" and is recomputed instead (the two agree unless an earlier position of
    the same element was also overridden).

    Returns the new states [batch, pos, d_inner, d_state]; differentiable (plain torch ops).
    """
    changed = patched != clean
    t_first = first_changed_position(clean, patched)
    if t_first is None:
        return patched
    dtype = patched.dtype
    u, delta, A, B = (x.to(dtype) for x in (u, delta, A, B))
    out = [patched[:, t] for t in range(t_first + 1)]   # before/at the first change: as given
    h = out[-1]
    # Elements with no override so far keep their clean value bit for bit (no re-rounding).
    dirty = changed[:, t_first]
    for t in range(t_first + 1, u.shape[1]):
        dA = torch.exp(delta[:, t, :, None] * A)
        rec = dA * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        h = torch.where(changed[:, t], patched[:, t], torch.where(dirty, rec, clean[:, t]))
        dirty = dirty | changed[:, t]
        out.append(h)
    return torch.stack(out, dim=1)
