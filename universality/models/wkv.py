"""The RWKV-4 WKV recurrence: C kernel and torch code with a hand-written backward, a float64
reference, and the propagation of patched WKV states.

Semantics are those of transformers' ``rwkv_linear_attention_cpu``: for every batch row ``b``
and channel ``c``, with decay ``w = -exp(time_decay[c])`` (< 0) and bonus ``u = time_first[c]``,

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{(t-1-i) w + k_i}     + e^{u + k_t})

computed as a recurrence over a state in max-normalised form ("num", "den", "max"): after
position ``t``

    num_t = e^{-max_t} sum_{i<=t} e^{(t-i) w + k_i} v_i,   den_t = e^{-max_t} sum_{i<=t} e^{(t-i) w + k_i}

with ``max_t = max(max_{t-1} + w, k_t)`` (start: num = den = 0, max = -1e38), so the real
numerator and denominator are ``num * e^max`` and ``den * e^max`` and nothing overflows in
float32. The representation is transformers' (its generation ``state[2:5]``); only the
products ``num e^max``, ``den e^max`` are meaningful on their own, so a patch replaces the three
together (``rwkv.wkv_state_patch``).

Shapes: k, v, y [batch, pos, C] (C = attention_hidden_size); time_decay, time_first [C]; states
num, den, max [batch, pos, C] each (the state AFTER each position, which y_{t+1} reads).

Two implementations of the same maths, one ``autograd.Function`` (``WkvFn``): the C kernel
``csrc/wkv.c`` (built on first use by :mod:`universality.core.native`; float32 CPU tensors) and
the torch code below (float64, CUDA tensors, or no C compiler; ``UNIVERSALITY_NATIVE=0``), both
vectorised over (batch, channel) with a loop over positions, both with a hand-written backward
(the reverse recurrence of the official RWKV-4 CUDA kernel, in the same max-normalised form:
its log-scales keep every exponent <= 0). The batch is split over worker threads as in
:mod:`universality.models.scan` (``_run_sharded``; ctypes releases the GIL).

``wkv_ref`` is the obviously correct float64 double loop over the sums above (no
normalisation: small inputs only) that both are tested against.
"""
from __future__ import annotations

import ctypes

import torch

from universality.core import native
from universality.models.scan import _run_sharded, _shards

__all__ = ["WkvFn", "wkv", "wkv_ref", "wkv_out", "wkv_step", "uses_kernel", "propagate_wkv_patch",
           "MIN_VALUE"]

#: The start value of the running max (transformers' rwkv_linear_attention_cpu).
MIN_VALUE = -1e38


def wkv_ref(time_decay, time_first, k, v):
    """Float64 reference: the defining sums, a double Python loop (differentiable; small inputs)."""
    w, u = -torch.exp(time_decay.double()), time_first.double()
    k, v = k.double(), v.double()
    out = []
    for t in range(k.shape[1]):
        num = torch.exp(u + k[:, t]) * v[:, t]
        den = torch.exp(u + k[:, t])
        for i in range(t):
            e = torch.exp((t - 1 - i) * w + k[:, i])
            num, den = num + e * v[:, i], den + e
        out.append(num / den)
    return torch.stack(out, 1)


def wkv_out(state, k_t, v_t, u):
    """y_t from the state before t (num, den, max [batch, C]) and k_t, v_t [batch, C]."""
    num, den, mx = state
    q = torch.maximum(mx, k_t + u)
    e1, e2 = torch.exp(mx - q), torch.exp(k_t + u - q)
    return (e1 * num + e2 * v_t) / (e1 * den + e2)


def wkv_step(state, k_t, v_t, w):
    """The state after t from the state before it; w = -exp(time_decay) [C]."""
    num, den, mx = state
    q = torch.maximum(mx + w, k_t)
    e1, e2 = torch.exp(mx + w - q), torch.exp(k_t - q)
    return e1 * num + e2 * v_t, e1 * den + e2, q


def _start(k):
    """The empty state for k [batch, pos, C]: zeros and a running max of MIN_VALUE."""
    z = k.new_zeros(k.shape[0], k.shape[2])
    return z, z.clone(), torch.full_like(z, MIN_VALUE)


def _torch_forward(w, u, k, v, states):
    """y [batch, pos, C]; fills ``states`` (three [batch, pos, C] tensors) unless None."""
    y = torch.empty_like(k)
    s = _start(k)
    for t in range(k.shape[1]):
        y[:, t] = wkv_out(s, k[:, t], v[:, t], u)
        s = wkv_step(s, k[:, t], v[:, t], w)
        if states is not None:
            for dst, src in zip(states, s):
                dst[:, t] = src
    return y


def _torch_backward(w, u, k, v, y, gy):
    """(gw, gu, gk, gv) of ``_torch_forward``: the two passes of ``csrc/wkv.c``'s backward."""
    T = k.shape[1]
    p, q, _ = _start(k)
    o = torch.full_like(p, MIN_VALUE)
    dpdw, dqdw, gw, gu = (torch.zeros_like(p) for _ in range(4))
    iden, ez = torch.empty_like(k), torch.empty_like(k)
    for t in range(T):
        kk, vv, yy, g = k[:, t], v[:, t], y[:, t], gy[:, t]
        no = torch.maximum(o, kk + u)
        A, B = torch.exp(o - no), torch.exp(kk + u - no)
        iden[:, t] = id_ = 1 / (A * q + B)
        ez[:, t] = kk + u - no
        gw += g * (dpdw - dqdw * yy) * id_ * A
        gu += g * (vv - yy) * B * id_
        n2 = torch.maximum(w + o, kk)
        A, B = torch.exp(w + o - n2), torch.exp(kk - n2)
        dpdw, dqdw = A * (p + dpdw), A * (q + dqdw)
        p, q, o = A * p + B * vv, A * q + B, n2
    gk, gv = torch.empty_like(k), torch.empty_like(k)
    gp, gq = torch.zeros_like(p), torch.zeros_like(p)
    o = torch.full_like(p, MIN_VALUE)
    for t in range(T - 1, -1, -1):
        kk, vv, yy = k[:, t], v[:, t], y[:, t]
        gz = gy[:, t] * iden[:, t]
        A, B = gz * torch.exp(ez[:, t]), torch.exp(kk + o)
        gk[:, t] = A * (vv - yy) + B * (gp * vv + gq)
        gv[:, t] = A + B * gp
        lo = ez[:, t] - kk - u
        no = torch.maximum(w + o, lo)
        e1, e2 = torch.exp(w + o - no), gz * torch.exp(lo - no)
        gp, gq, o = e1 * gp + e2, e1 * gq - e2 * yy, no
    return gw.sum(0), gu.sum(0), gk, gv


def _native():
    """The C kernel (universality/csrc/wkv.c) or None; see ``universality.core.native``."""
    lib = native.load("wkv")
    if lib is not None and not getattr(lib, "_typed", False):
        P, I = ctypes.c_void_p, ctypes.c_int
        lib.wkv_forward.argtypes = [P] * 9 + [I] * 4
        lib.wkv_forward.restype = None
        lib.wkv_backward.argtypes = [P] * 11 + [I] * 4
        lib.wkv_backward.restype = None
        lib._typed = True
    return lib


def uses_kernel(k: torch.Tensor) -> bool:
    """Whether :func:`wkv` on ``k`` runs the C kernel: float32 CPU tensors and a built kernel."""
    return k.dtype == torch.float32 and k.is_cpu and _native() is not None


def _native_forward(lib, w, u, k, v, states, workers):
    B, T, C = k.shape
    y = torch.empty_like(k)
    ptrs = [s.data_ptr() for s in states] if states is not None else [None] * 3
    shards = _shards(B, workers)

    def run(i):
        scratch = k.new_empty(3 * C)
        lib.wkv_forward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), *ptrs,
                        scratch.data_ptr(), T, C, shards[i].start, shards[i].stop)

    _run_sharded(run, len(shards), workers)
    return y


def _native_backward(lib, w, u, k, v, y, gy, workers):
    B, T, C = k.shape
    gk, gv = torch.empty_like(k), torch.empty_like(k)
    shards = _shards(B, workers)

    def run(i):
        gw, gu, scratch = w.new_zeros(C), w.new_zeros(C), k.new_empty(2 * T * C + 7 * C)
        lib.wkv_backward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(),
                         gy.data_ptr(), gk.data_ptr(), gv.data_ptr(), gw.data_ptr(), gu.data_ptr(),
                         scratch.data_ptr(), T, C, shards[i].start, shards[i].stop)
        return gw, gu

    parts = _run_sharded(run, len(shards), workers)
    return sum(p[0] for p in parts), sum(p[1] for p in parts), gk, gv


class WkvFn(torch.autograd.Function):
    """y = WKV(time_decay, time_first, k, v) with a hand-written backward (see the module docstring).

    Inputs contiguous, one dtype: time_decay, time_first [C]; k, v [batch, pos, C]. Returns y and,
    with ``return_states``, the states (num, den, max) [batch, pos, C] each (otherwise empty
    tensors: fixed arity). The states are not differentiable (they are read by hooks; a patched
    state's effect is recomputed by differentiable torch ops, ``propagate_wkv_patch``).
    Saved for backward: w, u, k, v and y.
    """

    @staticmethod
    def forward(ctx, time_decay, time_first, k, v, return_states: bool, use_native: bool, workers: int):
        w = -torch.exp(time_decay)
        B, T, C = k.shape
        states = tuple(k.new_empty(B, T, C) for _ in range(3)) if return_states else None
        ctx.native = use_native
        ctx.workers = workers
        if use_native:
            y = _native_forward(_native(), w, time_first, k, v, states, workers)
        else:
            y = _torch_forward(w, time_first, k, v, states)
        ctx.save_for_backward(w, time_first, k, v, y)
        ctx.set_materialize_grads(False)
        if states is None:
            states = tuple(k.new_empty(0) for _ in range(3))
        ctx.mark_non_differentiable(*states)
        return (y, *states)

    @staticmethod
    def backward(ctx, gy, *_):
        w, u, k, v, y = ctx.saved_tensors
        if gy is None:
            return (None,) * 7
        gy = gy.contiguous()
        if ctx.native:
            gw, gu, gk, gv = _native_backward(_native(), w, u, k, v, y, gy, ctx.workers)
        else:
            gw, gu, gk, gv = _torch_backward(w, u, k, v, y, gy)
        # d/d time_decay = d/dw * dw/d time_decay, and dw/d time_decay = -exp(time_decay) = w.
        return gw * w, gu, gk, gv, None, None, None


def wkv(time_decay, time_first, k, v, *, return_states: bool = False, workers: int | None = None,
        use_native: bool | None = None):
    """WKV of one layer (see the module docstring).

    Args:
        time_decay, time_first: [C] parameters (the decay is -exp(time_decay)).
        k, v: [batch, pos, C].
        return_states: also return (num, den, max) [batch, pos, C] each, not differentiable.
        workers: batch shards run in parallel threads (default ``torch.get_num_threads()``).
        use_native: force (True) or forbid (False) the C kernel; default: where it runs.

    Returns:
        y [batch, pos, C] in the promoted dtype (at least float32), or (y, (num, den, max)).
    """
    dtype = torch.promote_types(k.dtype, torch.float32)
    xs = [x.to(dtype).contiguous() for x in (time_decay, time_first, k, v)]
    if use_native is None:
        use_native = uses_kernel(xs[2])
    elif use_native and not uses_kernel(xs[2]):
        raise ValueError("the WKV C kernel needs float32 CPU tensors and a C compiler")
    y, *states = WkvFn.apply(*xs, bool(return_states), bool(use_native),
                             int(workers or torch.get_num_threads()))
    return (y, tuple(states)) if return_states else y


def propagate_wkv_patch(time_decay, time_first, k, v, y, clean, patched):
    """Re-run the recurrence after a hook replaced some WKV states; returns (y, states).

    ``clean`` is (num, den, max) as the scan computed them and ``patched`` what the hooks
    returned (each [batch, pos, C]). An element (b, t, c) where any of the three differs is an
    override: its state is set to the patched triple. Every later state of that (b, c) is
    recomputed from the previous one (``wkv_step``), so a patch at t propagates to all later
    positions; y_{t'} (t' > t) is recomputed from the state before it (``wkv_out``); untouched
    elements keep their clean values bit for bit. Differentiable (plain torch ops).
    """
    changed = (patched[0] != clean[0]) | (patched[1] != clean[1]) | (patched[2] != clean[2])
    per_pos = changed.any(-1).any(0)
    if not bool(per_pos.any()):
        return y, tuple(patched)
    t0 = int(per_pos.nonzero()[0, 0])
    w, u = -torch.exp(time_decay.to(k.dtype)), time_first.to(k.dtype)
    ys = [y[:, t] for t in range(t0 + 1)]
    out = [[s[:, t] for t in range(t0 + 1)] for s in patched]
    state = tuple(s[:, t0] for s in patched)
    dirty = changed[:, t0]
    for t in range(t0 + 1, k.shape[1]):
        ys.append(torch.where(dirty, wkv_out(state, k[:, t], v[:, t], u), y[:, t]))
        rec = wkv_step(state, k[:, t], v[:, t], w)
        state = tuple(torch.where(changed[:, t], p[:, t], torch.where(dirty, r, c[:, t]))
                      for p, r, c in zip(patched, rec, clean))
        for lst, s in zip(out, state):
            lst.append(s)
        dirty = dirty | changed[:, t]
    return torch.stack(ys, 1), tuple(torch.stack(lst, 1) for lst in out)
