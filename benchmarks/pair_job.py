"""Benchmark: one default-sized Pearson pair job's CPU seconds, with and without numba loaded.

    python benchmarks/pair_job.py              # 5 interleaved rounds
    python benchmarks/pair_job.py --rounds 8 --tokens 65536 --features 1024

A pair job of the default run (65,536 eval tokens, 1,024 SAE features per side, float32) does
little arithmetic: its cost is the process itself. Each round runs two fresh Python processes
side by side in turn (so that load from other processes hits both alike), each importing the
package, reading one synthetic SAE-like pair (written once by the parent) and streaming it
through ``PearsonAccumulator``, and writing the result:

  ours       the default: C scatter, NumPy maxima and zero fill
             (``numba_kernels.NUMPY_MAX_CELLS``), numba never imported
  baseline   the same with ``NUMPY_MAX_CELLS = 0`` (numba's maxima and zero fill), i.e. what every
             pair job did before numba was loaded on first use: import numba, set up its
             target, load the cached kernels

Prints the median process CPU seconds (user + system, from ``os.wait4``) of each and the ratio
baseline / ours, and checks that both wrote the same maxima.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys
import numpy as np, scipy.sparse as sp
from universality.compare.pearson import PearsonAccumulator, numba_kernels
if sys.argv[1] == "baseline":
    numba_kernels.NUMPY_MAX_CELLS = 0
a_file, b_file, out = sys.argv[2], sys.argv[3], sys.argv[4]
a, b = sp.load_npz(a_file).tocsr(), sp.load_npz(b_file).tocsr()
tokens, feats = a.shape
acc = PearsonAccumulator(feats, feats, backend="cpu", mode="sparse")
for t0 in range(0, tokens, 8192):
    acc.update(a[t0:t0 + 8192], b[t0:t0 + 8192])
r = acc.result(top_k=5)
np.savez(out, row_max=r["row_max"], row_arg=r["row_arg"], col_max=r["col_max"], col_arg=r["col_arg"])
print("numba" in sys.modules)
"""


def run_child(kind: str, a_file: str, b_file: str, out: str) -> tuple[float, str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, a_file, b_file, out],
                            stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{kind} child failed with exit code {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, proc.stdout.read().strip()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--features", type=int, default=1024)
    args = p.parse_args(argv)
    import numpy as np
    import scipy.sparse as sp

    times = {"ours": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for seed in (1, 2):  # SAE-like: ~32 active features per token, positive values
            m = sp.random(args.tokens, args.features, density=32 / args.features, format="csr",
                          dtype=np.float32, random_state=seed)
            m.data = np.abs(m.data) + 0.01
            files.append(os.path.join(tmp, f"side{seed}.npz"))
            sp.save_npz(files[-1], m)
        outs = {k: os.path.join(tmp, f"{k}.npz") for k in times}
        for r in range(args.rounds):
            for kind in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                cpu, numba_loaded = run_child(kind, *files, outs[kind])
                times[kind].append(cpu)
                print(f"round {r} {kind:9s} {cpu:5.2f} CPU s  numba imported: {numba_loaded}", flush=True)
        a, b = np.load(outs["ours"]), np.load(outs["baseline"])
        same = all(np.array_equal(a[k], b[k], equal_nan=True) for k in a.files)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"load average {os.getloadavg()[0]:.1f}; median CPU s: ours {med['ours']:.2f} "
          f"[{min(times['ours']):.2f}-{max(times['ours']):.2f}], baseline {med['baseline']:.2f} "
          f"[{min(times['baseline']):.2f}-{max(times['baseline']):.2f}]; "
          f"baseline / ours = {med['baseline'] / med['ours']:.2f}x; same maxima: {same}")


if __name__ == "__main__":
    main()
