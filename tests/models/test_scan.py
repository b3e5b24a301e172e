"""Selective scan: fast chunked scan + hand-written backward vs a float64 Python-loop reference."""

import pytest
import torch
import torch.nn.functional as F

from universality.models.scan import selective_scan
from universality.models.ssm_states import propagate_state_patch, selective_scan_ref, states_to_output


def make_inputs(batch=3, L=29, d=6, n=4, dtype=torch.float64, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, L, d, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, L, d, generator=g, dtype=dtype))
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 3 - 0.1
    B = torch.randn(batch, L, n, generator=g, dtype=dtype)
    C = torch.randn(batch, L, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    xs = [u, delta, A, B, C, D]
    return [x.requires_grad_(requires_grad) for x in xs]


def grads(out_fn, xs, *cotangents):
    outs = out_fn()
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])  # 29 positions: ragged last chunk for 5 and 16
def test_forward_and_states_match_reference_float64(chunk):
    xs = make_inputs(requires_grad=False)
    y, h = selective_scan(*xs, return_states=True, chunk=chunk)
    y_ref, h_ref = selective_scan_ref(*xs, return_states=True)
    assert y.shape == (3, 29, 6) and h.shape == (3, 29, 6, 4)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(selective_scan(*xs, chunk=chunk), y_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_gradients_match_reference_float64(chunk):
    xs = make_inputs()
    gy = torch.randn(3, 29, 6, dtype=torch.float64)
    got = grads(lambda: selective_scan(*xs, chunk=chunk), xs, gy)
    ref = grads(lambda: selective_scan_ref(*xs), xs, gy)
    for name, a, b in zip("u delta A B C D".split(), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


def test_gradients_through_returned_states_float64():
    xs = make_inputs(L=23)
    gy = torch.randn(3, 23, 6, dtype=torch.float64)
    gh = torch.randn(3, 23, 6, 4, dtype=torch.float64)
    got = grads(lambda: selective_scan(*xs, return_states=True, chunk=8), xs, gy, gh)
    ref = grads(lambda: selective_scan_ref(*xs, return_states=True), xs, gy, gh)
    for name, a, b in zip("u delta A B C D".split(), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


def test_float32_matches_float64_reference():
    xs = make_inputs(batch=2, L=70, d=16, n=8, dtype=torch.float32)
    gy = torch.randn(2, 70, 16)
    y = selective_scan(*xs)
    y_ref = selective_scan_ref(*xs)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    got = grads(lambda: selective_scan(*xs), xs, gy)
    ref = grads(lambda: selective_scan_ref(*xs), xs, gy.double())
    for name, a, b in zip("u delta A B C D".split(), got, ref):
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= 1e-5 * max(scale, 1.0), name


def test_gradcheck_and_no_skip_term():
    xs = make_inputs(batch=2, L=9, d=3, n=2)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk=4), xs)
    u, delta, A, B, C, _ = xs
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, None),
                               selective_scan_ref(u, delta, A, B, C, None))


def test_states_to_output_reproduces_y():
    xs = make_inputs(requires_grad=False)
    y, h = selective_scan(*xs, return_states=True)
    torch.testing.assert_close(states_to_output(h, xs[4], xs[0], xs[5]), y)


def test_propagate_state_patch():
    u, delta, A, B, C, D = make_inputs(requires_grad=False, L=12)
    _, clean = selective_scan_ref(u, delta, A, B, C, D, return_states=True)
    # No change: identity.
    assert propagate_state_patch(u, delta, A, B, clean, clean.clone()).equal(clean)
    # Override position t of batch row 1: earlier positions untouched, later ones follow the
    # recurrence from the patched state (checked against an explicit loop).
    t = 5
    patched = clean.clone()
    patched[1, t] = torch.randn_like(patched[1, t])
    out = propagate_state_patch(u, delta, A, B, clean, patched)
    assert out[:, :t].equal(clean[:, :t])
    assert out[0].equal(clean[0])  # the other batch row is unaffected
    h = patched[1, t]
    torch.testing.assert_close(out[1, t], h)
    for s in range(t + 1, 12):
        h = torch.exp(delta[1, s, :, None] * A) * h + (delta[1, s] * u[1, s])[:, None] * B[1, s]
        torch.testing.assert_close(out[1, s], h)
    assert not torch.allclose(out[1, -1], clean[1, -1])


def test_batch_sharded_workers_and_time_major_agree():
    # batch 9 -> shards of >= 4 rows on 2 workers; every layout/worker choice gives the same numbers
    xs = make_inputs(batch=9, L=21, d=5, n=3)
    gy = torch.randn(9, 21, 5, dtype=torch.float64)
    gh = torch.randn(9, 21, 5, 3, dtype=torch.float64)
    ref = grads(lambda: selective_scan_ref(*xs, return_states=True), xs, gy, gh)
    y_ref, h_ref = selective_scan_ref(*xs, return_states=True)
    for workers in (1, 2, 3):
        y, h = selective_scan(*xs, return_states=True, workers=workers, chunk=4)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(h, h_ref)
        got = grads(lambda: selective_scan(*xs, return_states=True, workers=workers, chunk=4), xs, gy, gh)
        for name, a, b in zip("u delta A B C D".split(), got, ref):
            torch.testing.assert_close(a, b, msg=f"workers={workers} grad {name}")
    u, delta, A, B, C, D = xs
    tm = [t.transpose(0, 1) for t in (u, delta, B, C)]
    y_tm = selective_scan(tm[0], tm[1], A, tm[2], tm[3], D, time_major=True, workers=2)
    torch.testing.assert_close(y_tm.transpose(0, 1), y_ref)


def test_scan_leaves_torch_thread_count_alone():
    before = torch.get_num_threads()
    xs = make_inputs(batch=8, requires_grad=True)
    selective_scan(*xs, workers=2).sum().backward()
    selective_scan(*xs, workers=1).sum().backward()
    assert torch.get_num_threads() == before


# --- the C kernel (universality/csrc/selective_scan.c): float32 training path -------------------

def test_native_kernel_builds_and_leaves_flush_to_zero_off():
    from universality.core import native
    from universality.models import scan

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a subnormal float32
    assert scan._native() is not None, "the C kernel did not build (is a C compiler installed?)"
    assert native.load("selective_scan") is scan._native()
    # Loading must not switch the process to flush-to-zero (crtfastmath.o would).
    assert (tiny * 1.0).item() > 0.0


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_native_float32_matches_float64_reference(workers):
    from universality.models import scan

    # L=37 with NATIVE_CHUNK 16: a ragged last chunk; batch 9 -> several shards for workers > 1.
    xs = make_inputs(batch=9, L=37, d=10, n=16, dtype=torch.float32, seed=3)
    xr = [x.detach().double().requires_grad_() for x in xs]
    gy = torch.randn(9, 37, 10)
    y = selective_scan(*xs, workers=workers)
    assert scan._native() is not None
    y_ref = selective_scan_ref(*xr)
    assert (y.double() - y_ref).abs().max().item() <= 1e-5 * y_ref.abs().max().item()
    got = grads(lambda: selective_scan(*xs, workers=workers), xs, gy)
    ref = grads(lambda: selective_scan_ref(*xr), xr, gy.double())
    for name, a, b in zip("u delta A B C D".split(), got, ref):
        assert (a.double() - b).abs().max().item() <= 1e-5 * b.abs().max().item(), name


def test_native_and_torch_paths_agree(monkeypatch):
    from universality.models import scan

    xs = make_inputs(batch=4, L=40, d=8, n=16, dtype=torch.float32, seed=5)
    gy = torch.randn(4, 40, 8)
    fast = [selective_scan(*xs)] + list(grads(lambda: selective_scan(*xs), xs, gy))
    monkeypatch.setattr(scan, "_native", lambda: None)
    slow = [selective_scan(*xs)] + list(grads(lambda: selective_scan(*xs), xs, gy))
    for name, a, b in zip("y u delta A B C D".split(), fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    # deterministic: the same call twice gives the same bits
    monkeypatch.undo()
    again = [selective_scan(*xs)] + list(grads(lambda: selective_scan(*xs), xs, gy))
    for a, b in zip(fast, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch,L,d,n,a_scale", [
    (2, 50, 37, 5, 1.0),    # d not a multiple of the vector width, ragged last chunk
    (3, 7, 1, 1, 1.0),      # one channel, one state, fewer positions than one chunk
    (1, 33, 19, 3, 60.0),   # delta * A far below -87: the kernel's exp clamps there
])
def test_native_odd_shapes_match_float64_reference(batch, L, d, n, a_scale):
    from universality.models import scan

    xs = make_inputs(batch=batch, L=L, d=d, n=n, dtype=torch.float32, seed=7)
    with torch.no_grad():
        xs[2].mul_(a_scale)
    xr = [x.detach().double().requires_grad_() for x in xs]
    gy = torch.randn(batch, L, d)
    assert scan.uses_kernel(xs[0])
    y = selective_scan(*xs, workers=1)
    y_ref = selective_scan_ref(*xr)
    assert (y.double() - y_ref).abs().max().item() <= 1e-5 * y_ref.abs().max().item()
    got = grads(lambda: selective_scan(*xs, workers=1), xs, gy)
    ref = grads(lambda: selective_scan_ref(*xr), xr, gy.double())
    for name, a, b in zip("u delta A B C D".split(), got, ref):
        assert (a.double() - b).abs().max().item() <= 1e-5 * max(b.abs().max().item(), 1e-30), name


def test_torch_fallback_runs_the_torch_path_and_restores_the_kernel(monkeypatch):
    """``scan.torch_fallback()`` (the benchmarks' baseline) gives bitwise what a machine
    without the C kernel computes, and the kernel is back after it, even after an error."""
    from universality.models import scan

    xs = make_inputs(batch=2, L=20, d=8, n=4, dtype=torch.float32, seed=3)
    assert scan.uses_kernel(xs[0])
    with scan.torch_fallback():
        assert not scan.uses_kernel(xs[0])
        inside = selective_scan(*xs)
    assert scan.uses_kernel(xs[0])
    with pytest.raises(RuntimeError), scan.torch_fallback():
        raise RuntimeError("inside")
    assert scan.uses_kernel(xs[0])
    monkeypatch.setattr(scan, "_native", lambda: None)  # no C kernel at all
    assert torch.equal(inside, selective_scan(*xs))
