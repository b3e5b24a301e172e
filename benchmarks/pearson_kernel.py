"""Benchmark: streaming sparse Pearson kernel vs dense and scipy.sparse baselines.

    python benchmarks/pearson_kernel.py                 # F = 4096 and 24576, 100k tokens
    python benchmarks/pearson_kernel.py --quick         # F = 4096, 20k tokens
    python benchmarks/pearson_kernel.py --features 4096 --tokens 50000

Synthetic SAE-like activations: per-feature firing frequencies are lognormal (heavy tailed,
a few features fire on 10-50% of tokens, the median on ~0.05%), mean L0 ``--l0`` per token,
lognormal values.  B's features partly copy A's (so maxima are not all ~0) plus noise.

Timed (wall and process CPU seconds; CPU seconds are the steadier number when other jobs
share the machine; the load average is printed), best of ``--repeat`` interleaved rounds
(ours, scipy, dense in turn, so that the machine's slow spells hit every method alike):
  ours    PearsonAccumulator (numba, ``--threads``), steady state of a pipeline that reuses
          one accumulator: reset() (zero-fill sxy) + stream 4096-token chunks (moments + sxy)
          + row/col max.  The one-off allocation/first touch of sxy is printed separately.
  scipy   zero-fill + per batch (65536 tokens, pre-sliced) ``A_b^T @ B_b`` as a float64
          SpGEMM added into a dense float64 sxy (sums only: no moments or maxima)
  dense   float32 ``X^T Y`` via BLAS on dense chunks plus moments (densifying is not timed);
          for F > 4096 it runs on a token subset and is scaled linearly (printed)
Peak memory: growth of the process peak RSS (VmHWM, reset per method) and the tracemalloc
peak of NumPy allocations during the method (of its best round).

Accuracy: MPPC row maxima the way the paper's public script computes them (bf16 inputs,
torch bf16 matmul per chunk, fp32 sums, single-pass formula) vs this kernel's exact result.
"""
from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp

from universality.compare.pearson import HAVE_NUMBA, PearsonAccumulator

# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def sae_like(n_tokens: int, n_feat: int, mean_l0: float, rng, sigma: float = 1.6) -> sp.csr_matrix:
    """[tokens, F] float32 CSR with lognormal per-feature frequencies (capped at 0.5)."""
    f = np.exp(rng.normal(0.0, sigma, n_feat))
    for _ in range(30):  # rescale to the target L0 under the cap
        f = np.minimum(f * mean_l0 / f.sum(), 0.5)
    counts = rng.binomial(n_tokens, f)
    feat = np.repeat(np.arange(n_feat, dtype=np.int64), counts)
    tok = rng.integers(0, n_tokens, feat.size)
    key = np.unique(tok * n_feat + feat)
    vals = rng.lognormal(0.0, 0.7, key.size).astype(np.float32)
    indptr = np.searchsorted(key // n_feat, np.arange(n_tokens + 1)).astype(np.int64)
    return sp.csr_matrix((vals, (key % n_feat).astype(np.int32), indptr), shape=(n_tokens, n_feat))


def correlated(a: sp.csr_matrix, n_feat: int, rng, keep: float = 0.7, noise_l0: float = 10) -> sp.csr_matrix:
    """B: each A feature maps to a random B feature; 70% of its firings are copied (values
    jittered), plus independent SAE-like noise firings."""
    c = a.tocoo()
    k = rng.random(c.nnz) < keep
    target = rng.integers(0, n_feat, a.shape[1])
    noise = sae_like(a.shape[0], n_feat, noise_l0, rng).tocoo()
    m = sp.csr_matrix(
        (np.r_[c.data[k] * rng.lognormal(0, 0.3, k.sum()).astype(np.float32), noise.data],
         (np.r_[c.row[k], noise.row], np.r_[target[c.col[k]], noise.col])),
        shape=a.shape, dtype=np.float32)
    m.sum_duplicates()
    return m


def chunks(m, rows):
    for s in range(0, m.shape[0], rows):
        yield m[s : s + rows]


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------
def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


class Measure:
    """Wall + CPU time, peak RSS growth (VmHWM reset via clear_refs) and tracemalloc peak."""

    def __enter__(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_ok = True
        except OSError:
            self.hwm_ok = False
        self.rss0 = _rss_kb()
        tracemalloc.start()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        self.traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.rss_peak = (_hwm_kb() - self.rss0) * 1024 if self.hwm_ok else float("nan")

    def mem(self) -> str:
        return (f"peak RSS +{self.rss_peak / 2**30:.2f} GiB, "
                f"tracemalloc peak {self.traced_peak / 2**30:.2f} GiB")


def gib(x):
    return x / 2**30


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------
class Ours:
    """Steady state of a pipeline that reuses one accumulator across layer pairs: ``sxy`` is
    allocated and first-touched once (timed separately: ``cold``), then each round is
    ``reset()`` (zero fill) + stream + ``result()``."""

    def __init__(self, pairs, n_a, n_b, args):
        self.pairs = pairs
        self.acc = PearsonAccumulator(n_a, n_b, backend="cpu", n_threads=args.threads,
                                      buffer_tokens=args.batch or None)
        with Measure() as self.cold:
            self.acc.update(*pairs[0])
            self.acc.sxy  # allocate + first touch of the F_A x F_B float64 accumulator
        self.acc.reset()  # load every compiled kernel once (numba's cache) outside the timings
        self.acc.result()
        self.best = None

    def round(self):
        acc = self.acc
        with Measure() as m_reset:
            acc.reset()  # zero-fills sxy
        with Measure() as m_acc:
            for ca, cb in self.pairs:
                acc.update(ca, cb)
            acc.sxy  # flush the last batch
        with Measure() as m_fin:
            self.res = acc.result()
        if self.best is None or m_reset.wall + m_acc.wall + m_fin.wall < sum(m.wall for m in self.best):
            self.best = (m_reset, m_acc, m_fin)


class Scipy:
    """Per batch ``A_b^T @ B_b`` (float64 SpGEMM) added into a dense float64 sxy; the batches
    are pre-sliced (not timed), sxy is allocated once and zero-filled inside the timing."""

    def __init__(self, a, b, args, n_tokens):
        self.s = np.zeros((a.shape[1], b.shape[1]))
        self.s[:] = 1.0  # first touch outside the timing, as for ours
        rows = args.batch or 65536
        self.batches = [(x.astype(np.float64), y.astype(np.float64))
                        for x, y in zip(chunks(a[:n_tokens], rows), chunks(b[:n_tokens], rows))]
        self.best = None

    def round(self):
        with Measure() as m:
            self.s[:] = 0.0
            for x, y in self.batches:
                c = (x.T.tocsr() @ y).tocoo()
                self.s[c.row, c.col] += c.data
        self.best = m if self.best is None or m.wall < self.best.wall else self.best


class Dense:
    """float32 ``X^T Y`` (BLAS) per chunk plus the moments, on pre-densified chunks."""

    def __init__(self, a, b, args, n_tokens):
        fa, fb = a.shape[1], b.shape[1]
        self.s = np.zeros((fa, fb), np.float32)
        self.s[:] = 1.0  # first touch outside the timing
        rows = min(args.chunk, n_tokens)
        self.xs = [(a[i : i + rows].toarray(), b[i : i + rows].toarray())
                   for i in range(0, n_tokens, rows)]
        self.best = None

    def round(self):
        s = self.s
        fa, fb = s.shape
        sx, sxx = np.zeros(fa, np.float64), np.zeros(fa, np.float64)
        sy, syy = np.zeros(fb, np.float64), np.zeros(fb, np.float64)
        with Measure() as m:
            s[:] = 0.0
            for x, y in self.xs:
                s += x.T @ y
                sx += x.sum(0)
                sxx += (x * x).sum(0)
                sy += y.sum(0)
                syy += (y * y).sum(0)
        self.best = m if self.best is None or m.wall < self.best.wall else self.best


def bf16_practice(a, b, rows_idx, chunk_rows, accumulate_bf16=False):
    """MPPC row maxima as in the paper's public script: bf16 inputs, torch bf16 matmul per
    chunk, fp32 (or bf16) sums, single-pass Pearson formula in fp32."""
    import torch

    n = a.shape[0]
    fa, fb = len(rows_idx), b.shape[1]
    acc_dtype = torch.bfloat16 if accumulate_bf16 else torch.float32
    sxy = torch.zeros(fa, fb, dtype=acc_dtype)
    sx, sxx = torch.zeros(fa), torch.zeros(fa)
    sy, syy = torch.zeros(fb), torch.zeros(fb)
    a_sub = a[:, rows_idx].tocsr()
    for s in range(0, n, chunk_rows):
        x = torch.from_numpy(a_sub[s : s + chunk_rows].toarray()).bfloat16()
        y = torch.from_numpy(b[s : s + chunk_rows].toarray()).bfloat16()
        sxy += (x.T @ y).to(acc_dtype)
        xf, yf = x.float(), y.float()
        sx += xf.sum(0)
        sxx += (xf * xf).sum(0)
        sy += yf.sum(0)
        syy += (yf * yf).sum(0)
    mx, my = sx / n, sy / n
    cov = sxy.float() / n - mx[:, None] * my[None, :]
    sdx = torch.sqrt(torch.clamp(sxx / n - mx * mx, min=0))
    sdy = torch.sqrt(torch.clamp(syy / n - my * my, min=0))
    r = cov / (sdx[:, None] * sdy[None, :])
    r = torch.nan_to_num(r, nan=-float("inf"), posinf=-float("inf"), neginf=-float("inf"))
    vals, args_ = r.max(dim=1)
    return vals.numpy().astype(np.float64), args_.numpy()


# --------------------------------------------------------------------------------------
def bench_one(n_feat: int, args) -> dict:
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    a = sae_like(args.tokens, n_feat, args.l0, rng)
    b = correlated(a, n_feat, rng, noise_l0=args.l0 * 0.2)
    na, nb = np.diff(a.indptr), np.diff(b.indptr)
    products = float(np.dot(na.astype(np.float64), nb))
    freq = np.bincount(a.indices, minlength=n_feat) / args.tokens
    print(f"\n=== F = {n_feat} per side, {args.tokens} tokens "
          f"(data generated in {time.perf_counter() - t0:.1f}s) ===")
    print(f"mean L0: A {na.mean():.1f}, B {nb.mean():.1f}; products sum_t nnzA*nnzB = {products:.3g}; "
          f"A feature frequency: max {freq.max():.3f}, median {np.median(freq):.2g}, "
          f"{(freq == 0).sum()} never fire")
    out = {"F": n_feat, "products": products}

    # rounds: ours, scipy, dense, each the best of --repeat interleaved rounds, so that a slow
    # spell of the machine (its speed drifts by a third over minutes) hits every method alike
    pairs = list(zip(chunks(a, args.chunk), chunks(b, args.chunk)))  # streamed chunks, not timed
    ours = Ours(pairs, n_feat, n_feat, args)
    n_sc = min(args.tokens, args.scipy_tokens or args.tokens)
    scipy_ = Scipy(a, b, args, n_sc)
    n_de = min(args.tokens, args.dense_tokens if n_feat > 4096 else max(args.dense_tokens, args.tokens))
    dense = None if args.skip_dense else Dense(a, b, args, n_de)
    for _ in range(args.repeat):
        for method in (ours, scipy_, dense):
            if method is not None:
                method.round()
                time.sleep(0.5)  # let BLAS / numba worker threads stop spinning before the next
    res, (m_reset, m_acc, m_fin), cold = ours.res, ours.best, ours.cold
    del pairs, ours
    sxy_gib = n_feat**2 * 8 / 2**30
    t_ours = m_reset.wall + m_acc.wall + m_fin.wall
    print(f"ours   : zero sxy {m_reset.wall:.2f}s + stream (moments, sxy) {m_acc.wall:.2f}s wall "
          f"({m_acc.cpu:.2f}s cpu, {products / m_acc.wall / 1e6:.0f} M products/s) + row/col max "
          f"{m_fin.wall:.2f}s wall ({m_fin.cpu:.2f}s cpu)")
    print(f"         memory: sxy {sxy_gib:.2f} GiB (float64) + working set: peak RSS "
          f"+{gib(max(m_acc.rss_peak, m_fin.rss_peak)):.2f} GiB, tracemalloc peak "
          f"{gib(max(m_acc.traced_peak, m_fin.traced_peak)):.2f} GiB")
    print(f"         one-off allocation + first touch of sxy: {cold.wall:.2f}s wall "
          f"(page faults; once per process, reset() reuses it)")
    print(f"         excluded A {res['excluded_a']}, B {res['excluded_b']}; "
          f"mean row max {np.nanmean(res['row_max']):.3f}")
    out.update(reset=m_reset.wall, acc=m_acc.wall, acc_cpu=m_acc.cpu, fin=m_fin.wall, cold=cold.wall)

    m = scipy_.best
    scale = args.tokens / n_sc
    note = "" if n_sc == args.tokens else f" (measured on {n_sc} tokens, scaled x{scale:.1f})"
    t_sc = m.wall * scale
    print(f"scipy  : zero sxy + stream (sxy only) {t_sc:7.2f}s wall ({m.cpu * scale:.2f}s cpu){note}")
    print(f"         memory: sxy {sxy_gib:.2f} GiB (float64) + working set: peak RSS "
          f"+{gib(m.rss_peak):.2f} GiB, tracemalloc peak {gib(m.traced_peak):.2f} GiB")
    out["scipy"] = t_sc
    print(f"         RATIO scipy/ours (zero + stream): {t_sc / (m_reset.wall + m_acc.wall):.1f}x wall, "
          f"{m.cpu * scale / (m_reset.cpu + m_acc.cpu):.1f}x cpu; end to end, both with our row/col "
          f"max pass: {(t_sc + m_fin.wall) / t_ours:.1f}x wall")
    del scipy_

    if dense is not None:
        m = dense.best
        scale = args.tokens / n_de
        note = "" if n_de == args.tokens else f" (measured on {n_de} tokens, scaled x{scale:.1f})"
        flops = 2.0 * n_de * n_feat * n_feat
        print(f"dense  : float32 X^T Y + moments {m.wall * scale:8.1f}s wall ({m.cpu * scale:.0f}s cpu)"
              f"{note}, {flops / m.wall / 1e9:.0f} GFLOP/s; {m.mem()}")
        print(f"         RATIO dense/ours: {m.wall * scale / (m_reset.wall + m_acc.wall):.0f}x "
              f"(sums); end to end, both with our row/col max pass: "
              f"{(m.wall * scale + m_fin.wall) / t_ours:.0f}x")
        out["dense"] = m.wall * scale
        del dense
    gc.collect()

    # bf16 public practice ----------------------------------------------------------------
    if args.bf16_rows:
        k = min(n_feat, args.bf16_rows)
        rows_idx = np.sort(np.random.default_rng(1).choice(n_feat, k, replace=False))
        exact = res["row_max"][rows_idx].astype(np.float64)
        for label, acc16 in (("bf16 inputs, fp32 sums", False), ("bf16 inputs, bf16 sxy sums", True)):
            t1 = time.perf_counter()
            vals, args_ = bf16_practice(a, b, rows_idx, args.bf16_chunk, accumulate_bf16=acc16)
            ok = np.isfinite(exact) & np.isfinite(vals)
            d = np.abs(vals[ok] - exact[ok])
            agree = np.mean(args_[ok] == res["row_arg"][rows_idx][ok])
            print(f"MPPC {label:27s} vs exact, {ok.sum()} A features"
                  f"{'' if k == n_feat else ' (random subset)'}: max |delta| {d.max():.2e}, "
                  f"mean |delta| {d.mean():.2e}, same argmax {agree:.1%} "
                  f"({time.perf_counter() - t1:.0f}s)")
            out[f"bf16_{int(acc16)}"] = (d.max(), d.mean())
    del a, b, res
    gc.collect()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=None, help="evaluation tokens (default 100000; quick 20000)")
    p.add_argument("--features", type=int, nargs="+", default=None, help="F per side (default 4096 24576)")
    p.add_argument("--l0", type=float, default=48.0, help="mean active features per token (A)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=4096, help="token rows per streamed chunk")
    p.add_argument("--batch", type=int, default=0,
                   help="tokens per kernel call (ours) and per SpGEMM (scipy); 0: our default")
    p.add_argument("--repeat", type=int, default=1,
                   help="interleaved rounds of ours, scipy and dense; each method's best is printed")
    p.add_argument("--dense-tokens", type=int, default=8192,
                   help="token subset for the dense baseline when F > 4096 (scaled linearly)")
    p.add_argument("--scipy-tokens", type=int, default=0, help="token subset for scipy (0: all)")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--bf16-rows", type=int, default=2048, help="A features in the bf16 check (0: skip)")
    p.add_argument("--bf16-chunk", type=int, default=4096)
    p.add_argument("--quick", action="store_true", help="F=4096, 20k tokens, 512 bf16 rows")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens = args.tokens or 20000
        args.features = args.features or [4096]
        args.bf16_rows = min(args.bf16_rows, 512)
    args.tokens = args.tokens or 100_000
    args.features = args.features or [4096, 24576]

    import torch

    torch.set_num_threads(args.threads)
    if not HAVE_NUMBA:
        print("WARNING: numba missing: 'ours' runs the scipy fallback kernel")
    # compile the numba kernels outside the timings
    w = sae_like(2000, 64, 8, np.random.default_rng(0))
    for kwargs in ({}, {"n_threads": args.threads}):
        acc = PearsonAccumulator(64, 64, backend="cpu", **kwargs)
        acc.update(w, w)
        acc.result()
    print(f"threads {args.threads}, chunk {args.chunk}, batch {args.batch or 'auto'}, L0 {args.l0}, "
          f"best of {args.repeat}; load average before: {os.getloadavg()[0]:.1f} "
          f"(on {os.cpu_count()} CPUs: timings are inflated when other jobs share the machine)")

    outs = [bench_one(f, args) for f in args.features]
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")

    big = [o for o in outs if o["F"] == max(args.features)][-1]
    per_tok = big["acc"] / args.tokens
    n_full, pairs = 1_000_000, 12 * 24
    # stream time scales with tokens (products at fixed L0); zero-fill and row/col max with
    # F^2 only.  Cache behaviour depends on F: measure at F = 24576 for a faithful number.
    f2 = (24576 / big["F"]) ** 2
    pair_s = big["reset"] * f2 + per_tok * n_full + big["fin"] * f2
    print(f"\n=== projection: paper problem, {pairs} layer pairs x 24576^2 features x {n_full} tokens "
          f"(L0 {args.l0:g}) ===")
    print(f"from F={big['F']}: {per_tok * 1e6:.1f} us/token streaming, {big['reset'] * f2:.1f}s zero-fill, "
          f"{big['fin'] * f2:.1f}s row/col max per pair")
    print(f"per pair ~{pair_s:.0f}s -> {pairs} pairs ~{pair_s * pairs / 3600:.1f} h on this CPU "
          f"({args.threads} threads, one reused accumulator; +{big['cold'] * f2:.0f}s per pair if "
          f"every pair runs in a fresh process); sxy needs {24576**2 * 8 / 2**30:.1f} GiB")
    if "scipy" in big:
        sc = (big["scipy"] / args.tokens * n_full + big["fin"] * f2) * pairs / 3600
        print(f"scipy.sparse baseline (+ our row/col max) would take ~{sc:.1f} h")
    if "dense" in big:
        de = big["dense"] / args.tokens * n_full * pairs / 3600
        print(f"dense float32 baseline would take ~{de:.0f} h ({de / 24:.0f} days)")


if __name__ == "__main__":
    main()
