"""Selective scan (the Mamba S6 recurrence) for CPU training, with a hand-written backward.

Semantics are those of ``transformers``' ``MambaMixer`` slow path (``mamba_selective_scan``): for
every batch row ``b``, channel ``d`` and state index ``n``

    dA_t  = exp(delta_t[d] * A[d, n])                    (discretised A)
    dBu_t = delta_t[d] * B_t[n] * u_t[d]                 (discretised B times the input)
    h_t   = dA_t * h_{t-1} + dBu_t,        h_{-1} = 0    (the state)
    y_t   = sum_n h_t[d, n] * C_t[n] + D[d] * u_t[d]     (the output)

Layout used throughout (batch-major, the layout of the model's hook sites):

    u, delta   [batch, pos, d_inner]   input of the SSM and its step size (after softplus)
    A          [d_inner, d_state]      negative real diagonal (``-exp(A_log)``)
    B, C       [batch, pos, d_state]   input-dependent input/output matrices
    D          [d_inner] or None       skip connection
    y          [batch, pos, d_inner]
    states h   [batch, pos, d_inner, d_state]

Why a custom ``autograd.Function``: autograd through a per-position Python loop records
hundreds of tiny graph nodes per layer and its backward is ~50x slower than the forward (see
PITFALLS.md). Here the forward walks over time in chunks of ``chunk`` positions; all
[chunk, batch, d_inner, d_state] intermediates live only inside one chunk (they stay in cache and
are never stored), and only the state at each chunk boundary is saved. The backward re-runs
the forward of one chunk from its saved boundary state, then runs the reverse recurrence

    g_h_t = C_t * g_y_t (+ g_states_t) + dA_{t+1} * g_h_{t+1}

and turns it into gradients with a few batched matmuls. Every per-position step is one
in-place ``addcmul_`` on a contiguous [batch, d_inner, d_state] slice (time-major internally;
``time_major=True`` takes and returns [pos, batch, ...] tensors without layout copies).

Two implementations of the same maths: the C kernel ``csrc/selective_scan.c`` (built on first
use by :mod:`universality.core.native`; float32 without ``return_states``, i.e. every training step),
which keeps each batch row's state, laid out [d_state, d_inner], in cache and vectorises over
d_inner, and the torch code below (float64, returned states, or no C compiler). Measured on the
2-core dev box under load, one layer, d_inner 256, d_state 16, one thread: fwd + bwd 13-19 ms (C)
at batch 8 x 256 and at 64 x 32, 2.3-2.5x faster than the previous [d_inner, d_state] kernel and
4.3-7.8x faster than the torch code (``benchmarks/scan_kernel.py``); ``benchmarks/mamba_train.py``
prints the whole-model gain.

Threads: the batch is split into shards scanned by Python worker threads whose torch ops are
single-threaded (see ``SCAN_WORKERS``); torch releases the GIL inside ops, so shards run in
parallel without an OpenMP barrier after each of the thousands of small per-position ops.

The float64 reference loop and the state-patching helpers live in
:mod:`universality.models.ssm_states`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from universality.core import native

__all__ = [
    "DEFAULT_CHUNK",
    "SCAN_WORKERS",
    "SelectiveScanFn",
    "selective_scan",
    "torch_fallback",
    "uses_kernel",
]

#: Worker threads for the scan (None: ``torch.get_num_threads()`` at call time). The batch is
#: split into this many shards, each scanned by a Python thread whose torch ops run with ONE
#: intra-op thread. Why not torch's own 2-thread OpenMP parallelism: the scan issues ~3 small
#: ops per position, each ending in an OpenMP barrier, and on a busy machine a descheduled
#: thread turns every barrier into a scheduler time slice. Measured on the 2-core dev box under
#: load, fwd+bwd of one layer (batch 16 x 256, d_inner 256, d_state 16): 1.4-2.0 s with 2 OpenMP
#: threads, 0.15-0.23 s single-threaded. torch ops release the GIL, so shards run in parallel.
SCAN_WORKERS: int | None = None

#: Positions per chunk. Chosen by measurement on a 2-core CPU (batch 16, d_inner 256,
#: d_state 16): one chunk of intermediates is ~2 MiB, small enough to stay in cache.
DEFAULT_CHUNK = 8

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None  # (pid, workers): a forked child builds its own pool
_pool_lock = threading.Lock()


# Per-thread intra-op thread counts are an OpenMP property (thread-local ICVs, thread-local MKL
# setting). torch's native thread-pool backend cannot change them after startup, so there the
# scan runs inline with torch's defaults.
_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


@contextmanager
def _intra_op_threads(n: int):
    """Temporarily set torch's intra-op thread count of the calling thread (restored on exit)."""
    old = torch.get_num_threads()
    if n == old or not _OPENMP:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """Threads whose torch ops are single-threaded (OpenMP and MKL thread counts are per thread)."""
    global _pool, _pool_key
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool_key != key:
            old = torch.get_num_threads()
            started = threading.Barrier(workers + 1)

            def init():
                torch.get_num_threads()   # run torch's lazy per-thread init first, then
                torch.set_num_threads(1)  # pin this thread to 1 OpenMP thread (MKL: thread-local)
                started.wait()

            pool = ThreadPoolExecutor(workers, thread_name_prefix="selective-scan", initializer=init)
            for _ in range(workers):      # start every thread now (each blocks in init)
                pool.submit(lambda: None)
            started.wait()
            torch.set_num_threads(old)    # set_num_threads also touched the global default
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool, _pool_key = pool, key
        return _pool


def _run_sharded(fn, n_items: int, workers: int):
    """Run ``fn(i)`` for i in range(n_items) on the worker threads (inline if just one).

    Always without autograd recording (grad mode is thread-local: workers start with it on).
    """
    def call(i):
        with torch.no_grad():
            return fn(i)

    if n_items == 1 or not _OPENMP:
        with _intra_op_threads(1):
            return [call(i) for i in range(n_items)]
    return list(_worker_pool(workers).map(call, range(n_items)))


def _chunk_forward(delta, du, A, B, h0, dA, H):
    """Run the recurrence over one chunk (time-major tensors), writing into ``dA`` and ``H``.

    delta, du: [k, batch, d]; A: [d, n]; B: [k, batch, n]; h0: [batch, d, n] (state before the
    chunk); dA, H: [k, batch, d, n] output buffers. Afterwards dA[t] = exp(delta_t * A) and H[t]
    is the state after position t. The buffers are reused across chunks: fresh multi-MiB
    allocations per chunk cost page faults (measured ~40% slower element-wise ops).
    """
    torch.mul(delta.unsqueeze(-1), A, out=dA)
    dA.exp_()
    torch.mul(du.unsqueeze(-1), B.unsqueeze(2), out=H)
    Hs, dAs = H.unbind(0), dA.unbind(0)  # per-position views, made once
    Hs[0].addcmul_(dAs[0], h0)
    for t in range(1, len(Hs)):
        Hs[t].addcmul_(dAs[t], Hs[t - 1])


def _scan_forward(u, delta, A, B, C, D, chunk, states):
    """Forward of one batch shard (contiguous time-major tensors, see ``SelectiveScanFn``).

    Returns y [pos, batch, d] and h_starts [n_chunks, batch, d, n] (state before each chunk).
    Writes all states into ``states`` ([pos, batch, d, n]) unless it is None.
    """
    L, Bsz, d = u.shape
    n = A.shape[1]
    du = delta * u
    y = torch.empty_like(u)
    n_chunks = (L + chunk - 1) // chunk
    h_starts = u.new_zeros(n_chunks, Bsz, d, n)
    dA_buf = u.new_empty(min(chunk, L), Bsz, d, n)
    H_buf = dA_buf if states is not None else u.new_empty(min(chunk, L), Bsz, d, n)
    for c in range(n_chunks):
        t0, t1 = c * chunk, min(L, (c + 1) * chunk)
        k = t1 - t0
        H = H_buf[:k] if states is None else states[t0:t1]
        _chunk_forward(delta[t0:t1], du[t0:t1], A, B[t0:t1], h_starts[c], dA_buf[:k], H)
        # y_t[d] = sum_n C_t[n] H_t[d, n]: one batched (1 x n) @ (n x d) over (pos, batch);
        # the transposed-operand form is ~1.6x faster than (d x n) @ (n x 1).
        torch.bmm(C[t0:t1].reshape(k * Bsz, 1, n), H.view(k * Bsz, d, n).transpose(1, 2),
                  out=y[t0:t1].view(k * Bsz, 1, d))
        if c + 1 < n_chunks:
            h_starts[c + 1].copy_(H[k - 1])
    y.addcmul_(u, D)
    return y, h_starts


def _scan_backward(u, delta, A, B, C, D, h_starts, gy, gstates, chunk):
    """Backward of one batch shard: gradients (gu, gdelta, gA, gB, gC, gD) of ``_scan_forward``.

    Per chunk, from the last to the first: recompute dA and H from the saved chunk-start state,
    run the reverse recurrence g_h_t = C_t g_y_t (+ g_states_t) + dA_{t+1} g_h_{t+1}, then
    contract. ``gstates`` ([pos, batch, d, n]) may be None.
    """
    L, Bsz, d = u.shape
    n = A.shape[1]
    du = delta * u
    g_du = torch.empty_like(u)        # dLoss / d(delta * u)
    g_dA_delta = torch.empty_like(u)  # dLoss / d delta through dA = exp(delta * A)
    gB = torch.empty_like(B)
    gC = torch.empty_like(C)
    gA = torch.zeros_like(A)
    # carry = dA_{t1} * g_h_{t1}: the part of g_h_{t1 - 1} that comes from the next chunk.
    carry = u.new_zeros(Bsz, d, n)
    kmax = min(chunk, L)
    dA_buf, H_buf, G_buf = (u.new_empty(kmax, Bsz, d, n) for _ in range(3))
    gdA_buf = u.new_empty(d, kmax * Bsz, 1)
    for c in range((L + chunk - 1) // chunk - 1, -1, -1):
        t0, t1 = c * chunk, min(L, (c + 1) * chunk)
        k = t1 - t0
        kb = k * Bsz
        h0 = h_starts[c]
        dA, H, G = dA_buf[:k], H_buf[:k], G_buf[:k]
        # Recompute this chunk's forward (in cache; cheaper than storing [pos, b, d, n] tensors).
        _chunk_forward(delta[t0:t1], du[t0:t1], A, B[t0:t1], h0, dA, H)
        # G_t = g_h_t: the local term C_t * g_y_t, then the reverse recurrence.
        torch.mul(gy[t0:t1].unsqueeze(-1), C[t0:t1].unsqueeze(2), out=G)
        if gstates is not None:
            G += gstates[t0:t1]
        G[k - 1] += carry
        Gs, dAs = G.unbind(0), dA.unbind(0)
        for t in range(k - 2, -1, -1):
            Gs[t].addcmul_(dAs[t + 1], Gs[t + 1])
        # Contractions over d or n: batched mat-vecs over (pos, batch).
        Gm = G.view(kb, d, n)
        torch.bmm(gy[t0:t1].reshape(kb, 1, d), H.view(kb, d, n), out=gC[t0:t1].view(kb, 1, n))
        torch.bmm(B[t0:t1].reshape(kb, 1, n), Gm.transpose(1, 2), out=g_du[t0:t1].view(kb, 1, d))
        torch.bmm(du[t0:t1].reshape(kb, 1, d), Gm, out=gB[t0:t1].view(kb, 1, n))
        # P = dLoss/d(delta*A) = g_h_t * dA_t * h_{t-1}  (reuses G's memory).
        P = G.mul_(dA)
        carry.copy_(P[0])
        P[1:].mul_(H[:-1])
        P[0].mul_(h0)
        Pm = P.view(kb, d, n)
        # d(delta*A)/d delta: a sum over n weighted by A -> one bmm batched over d.
        gdA = torch.bmm(Pm.transpose(0, 1), A.unsqueeze(-1), out=gdA_buf[:, :kb])
        g_dA_delta[t0:t1].view(kb, d).copy_(gdA.view(d, kb).t())
        # d(delta*A)/dA: a sum over (pos, batch) weighted by delta (an outer-dim reduction).
        gA += Pm.mul_(delta[t0:t1].reshape(kb, d, 1)).sum(0)
    gu = torch.addcmul(g_du * delta, gy, D)
    gdelta = torch.addcmul(g_dA_delta, g_du, u)
    gD = (gy * u).sum(dim=(0, 1))
    return gu, gdelta, gA, gB, gC, gD


#: Smallest batch shard worth its own thread: below this, per-op Python overhead (serialised by
#: the GIL) outweighs the parallel compute.
MIN_SHARD_ROWS = 4


def _shards(batch: int, workers: int) -> list[slice]:
    """Contiguous batch slices, one per worker, each at least MIN_SHARD_ROWS rows (or one)."""
    n = max(1, min(workers, batch // MIN_SHARD_ROWS))
    bounds = [round(i * batch / n) for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


#: Positions per chunk of the C kernel's backward (it recomputes one chunk of states and of
#: exp(delta * A) at a time: 2 * chunk * d_inner * d_state floats of scratch per thread, 512 KiB
#: at 16 x 256 x 16, which stays in a 1 MiB L2).
NATIVE_CHUNK = 16


#: Set by :func:`torch_fallback`: every scan takes the torch path.
_TORCH_ONLY = False


@contextmanager
def torch_fallback():
    """Inside, every scan runs the torch code instead of the C kernel (what a machine without a
    C compiler runs): the benchmarks' baseline."""
    global _TORCH_ONLY
    old, _TORCH_ONLY = _TORCH_ONLY, True
    try:
        yield
    finally:
        _TORCH_ONLY = old


def _native():
    """The C kernel (universality/csrc/selective_scan.c) or None (no compiler, or inside
    :func:`torch_fallback`); see ``universality.core.native``."""
    if _TORCH_ONLY:
        return None
    lib = native.load("selective_scan")
    if lib is not None and not getattr(lib, "_typed", False):
        P, I = ctypes.c_void_p, ctypes.c_int
        lib.scan_forward.argtypes = [P] * 9 + [I] * 7
        lib.scan_forward.restype = None
        lib.scan_backward.argtypes = [P] * 17 + [I] * 7
        lib.scan_backward.restype = None
        lib._typed = True
    return lib


def uses_kernel(u: torch.Tensor, return_states: bool = False) -> bool:
    """Whether :func:`selective_scan` on ``u`` runs the C kernel: float32 (after promotion) CPU
    tensors, no returned states, and a kernel that could be built."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    return dtype == torch.float32 and u.is_cpu and not return_states and _native() is not None


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _native_forward(lib, u, delta, A, B, C, D, chunk, workers):
    """y [pos, batch, d] and the chunk-start states [n_chunks, batch, n, d] (float32, time-major;
    the kernel's own layout, read only by ``_native_backward``)."""
    L, Bsz, d = u.shape
    n = A.shape[1]
    At = A.t().contiguous()  # the kernel's state layout is [n, d]
    y = torch.empty_like(u)
    starts = u.new_empty((L + chunk - 1) // chunk, Bsz, n, d)
    shards = _shards(Bsz, workers)

    def run(i):
        h = u.new_empty((n + 1) * d)  # the state [n, d], then d floats of scratch
        lib.scan_forward(_ptr(u), _ptr(delta), _ptr(At), _ptr(B), _ptr(C), _ptr(D), _ptr(y),
                         _ptr(starts), _ptr(h), L, Bsz, d, n, chunk, shards[i].start, shards[i].stop)

    _run_sharded(run, len(shards), workers)
    return y, starts


def _native_backward(lib, u, delta, A, B, C, D, starts, gy, chunk, workers):
    """(gu, gdelta, gA, gB, gC, gD) of ``_native_forward``; partial sums added in shard order."""
    L, Bsz, d = u.shape
    n = A.shape[1]
    At = A.t().contiguous()
    gu, gdelta = torch.empty_like(u), torch.empty_like(u)
    gB, gC = torch.empty_like(B), torch.empty_like(C)
    shards = _shards(Bsz, workers)

    def run(i):
        gA, gD = A.new_zeros(n, d), D.new_zeros(d)  # gA transposed, as At
        # H: one chunk of states, then of exp(delta * A); G: the carried gradient; acc: 3 [d]
        H, G, acc = u.new_empty(2, min(chunk, L), n, d), u.new_empty(n, d), u.new_empty(3 * d)
        lib.scan_backward(_ptr(u), _ptr(delta), _ptr(At), _ptr(B), _ptr(C), _ptr(D), _ptr(starts),
                          _ptr(gy), _ptr(gu), _ptr(gdelta), _ptr(gA), _ptr(gB), _ptr(gC), _ptr(gD),
                          _ptr(H), _ptr(G), _ptr(acc), L, Bsz, d, n, chunk, shards[i].start,
                          shards[i].stop)
        return gA, gD

    parts = _run_sharded(run, len(shards), workers)
    gA = sum(p[0] for p in parts).t().contiguous()
    return gu, gdelta, gA, gB, gC, sum(p[1] for p in parts)


class SelectiveScanFn(torch.autograd.Function):
    """Chunked selective scan with a reverse-scan backward, sharded over the batch.

    Inputs are TIME-MAJOR and contiguous: u, delta [pos, batch, d]; A [d, n]; B, C
    [pos, batch, n]; D [d]. Returns y [pos, batch, d] and, if ``return_states``, the states
    [pos, batch, d, n] (otherwise an empty tensor, so that the output arity is fixed).
    Saved for backward: the inputs and one state per chunk (pos / chunk * batch * d * n floats).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, chunk: int, return_states: bool, workers: int):
        L, Bsz, d = u.shape
        n = A.shape[1]
        shards = _shards(Bsz, workers)
        ctx.chunk, ctx.workers = chunk, workers
        # Unused outputs (e.g. the empty states placeholder) get None instead of zero tensors.
        ctx.set_materialize_grads(False)
        # The C kernel reads host memory: CUDA tensors take the torch code.
        ctx.native = uses_kernel(u, return_states)
        if ctx.native:
            y, starts = _native_forward(_native(), u, delta, A, B, C, D, NATIVE_CHUNK, workers)
            ctx.save_for_backward(u, delta, A, B, C, D, starts)
            return y, u.new_empty(0)
        if len(shards) == 1:  # no shard copies
            states = u.new_empty(L, Bsz, d, n) if return_states else None
            with _intra_op_threads(1):
                y, h_starts = _scan_forward(u, delta, A, B, C, D, chunk, states)
            ctx.save_for_backward(u, delta, A, B, C, D, h_starts)
            return y, (states if return_states else u.new_empty(0))
        y = torch.empty_like(u)
        states = u.new_empty(L, Bsz, d, n) if return_states else u.new_empty(0)
        h_starts = u.new_empty((L + chunk - 1) // chunk, Bsz, d, n)

        def run(i):
            sl = shards[i]
            part = [x[:, sl].contiguous() for x in (u, delta, B, C)]
            st = u.new_empty(L, sl.stop - sl.start, d, n) if return_states else None
            y_i, h_i = _scan_forward(part[0], part[1], A, part[2], part[3], D, chunk, st)
            y[:, sl] = y_i
            h_starts[:, sl] = h_i
            if return_states:
                states[:, sl] = st

        _run_sharded(run, len(shards), workers)
        ctx.save_for_backward(u, delta, A, B, C, D, h_starts)
        return y, states

    @staticmethod
    def backward(ctx, gy, gstates):
        u, delta, A, B, C, D, h_starts = ctx.saved_tensors
        if gy is None:
            gy = torch.zeros_like(u)
        if ctx.native:  # the forward ran the C kernel, so there are no state outputs to pass on
            g = _native_backward(_native(), u, delta, A, B, C, D, h_starts, gy.contiguous(),
                                 NATIVE_CHUNK, ctx.workers)
            return (*g, None, None, None)
        if gstates is not None and gstates.numel() == 0:
            gstates = None
        shards = _shards(u.shape[1], ctx.workers)
        if len(shards) == 1:  # no shard copies
            with _intra_op_threads(1):
                gu, gdelta, gA, gB, gC, gD = _scan_backward(
                    u, delta, A, B, C, D, h_starts, gy.contiguous(),
                    None if gstates is None else gstates.contiguous(), ctx.chunk)
            return gu, gdelta, gA, gB, gC, gD, None, None, None
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gB, gC = torch.empty_like(B), torch.empty_like(C)

        def run(i):
            sl = shards[i]
            part = [x[:, sl].contiguous() for x in (u, delta, B, C, h_starts, gy)]
            gs = None if gstates is None else gstates[:, sl].contiguous()
            g = _scan_backward(part[0], part[1], A, part[2], part[3], D, part[4], part[5], gs,
                               ctx.chunk)
            gu[:, sl], gdelta[:, sl], gB[:, sl], gC[:, sl] = g[0], g[1], g[3], g[4]
            return g[2], g[5]  # gA, gD: partial sums over this shard's batch rows

        parts = _run_sharded(run, len(shards), ctx.workers)
        gA = sum(p[0] for p in parts)
        gD = sum(p[1] for p in parts)
        return gu, gdelta, gA, gB, gC, gD, None, None, None


def selective_scan(u, delta, A, B, C, D=None, *, return_states: bool = False,
                   chunk: int = DEFAULT_CHUNK, time_major: bool = False,
                   workers: int | None = None):
    """Fast selective scan (see the module docstring for the maths).

    Args:
        u: [batch, pos, d_inner] SSM input (``hook_ssm_in``).
        delta: [batch, pos, d_inner] step size, already softplus'ed (``hook_delta``).
        A: [d_inner, d_state] (negative).
        B, C: [batch, pos, d_state].
        D: [d_inner] skip weight, or None for no skip term.
        return_states: also return every state h_t, [batch, pos, d_inner, d_state]
            (costs one more [pos, batch, d_inner, d_state] tensor; gradients flow through it).
        chunk: positions per chunk (speed knob only; results do not depend on it beyond rounding).
        time_major: all [batch, pos, ...] tensors above (inputs and outputs) are [pos, batch, ...]
            instead; the scan's native layout, so contiguous inputs are used without copies.
        workers: batch shards scanned in parallel threads (default ``SCAN_WORKERS``).

    Returns:
        y [batch, pos, d_inner] in the promoted float dtype (at least float32), or (y, states).
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    if workers is None:
        workers = SCAN_WORKERS or torch.get_num_threads()
    if D is None:
        D = u.new_zeros(u.shape[-1], dtype=dtype)
    # Time-major, contiguous, float32/float64: each step's slice is one contiguous block.
    xs = [x.to(dtype) if time_major else x.to(dtype).transpose(0, 1) for x in (u, delta, B, C)]
    xs = [x.contiguous() for x in xs]
    y, states = SelectiveScanFn.apply(xs[0], xs[1], A.to(dtype).contiguous(), xs[2], xs[3],
                                      D.to(dtype).contiguous(), int(chunk), bool(return_states),
                                      int(workers))
    if not return_states:
        return y if time_major else y.transpose(0, 1)
    return (y, states) if time_major else (y.transpose(0, 1), states.transpose(0, 1))
