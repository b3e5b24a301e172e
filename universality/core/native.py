"""Build and load the package's C kernels (``universality/csrc/*.c``) with the system compiler.

Why not a torch C++ extension: compiling against torch's headers takes about a minute and needs
ninja; these kernels take raw float pointers, build in about a second with ``cc`` and are called
through ``ctypes`` (which releases the GIL, so Python threads can run them in parallel).

The shared object is cached under ``$XDG_CACHE_HOME/universality`` (default ``~/.cache``), keyed
by the source, the flags, the compiler and the CPU (``-march=native``), and written atomically.
Without a working compiler the callers fall back to their torch code; set
``UNIVERSALITY_NATIVE=0`` to force that fallback.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCES = Path(__file__).resolve().parent.parent / "csrc"
# -ffast-math: glibc declares its vector expf (libmvec) only under __FAST_MATH__; the kernels
# never rely on inf/NaN semantics (the training loop checks the loss itself).
# Compile and link are separate steps: linking with -ffast-math would pull in crtfastmath.o,
# whose constructor turns on flush-to-zero for the whole process when the library loads,
# silently changing torch's own arithmetic (checked in tests/test_scan.py).
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC"]
if platform.machine() in ("x86_64", "AMD64"):
    # AVX-512 machines: 16-wide instead of 8-wide vectors (measured 1.2-1.5x faster selective
    # scan on a Zen 4 core; an x86-only option: other compilers' targets would reject it and
    # lose the kernel).
    FLAGS.insert(2, "-mprefer-vector-width=512")
LINK = ["-shared"]


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "universality"


@functools.lru_cache(maxsize=None)
def load(name: str, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled ``csrc/{name}.c`` as a CDLL, or None (with one warning) if it cannot be built.

    ``extra_flags`` go after :data:`FLAGS` (e.g. ``-fno-fast-math`` for a kernel whose sums
    must round exactly as its reference's)."""
    if os.environ.get("UNIVERSALITY_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        warnings.warn(f"no C compiler found: {name} runs its slower torch fallback", stacklevel=2)
        return None
    source = SOURCES / f"{name}.c"
    key = hashlib.sha256(
        b"\0".join([source.read_bytes(), " ".join(FLAGS + list(extra_flags) + LINK).encode(), cc.encode(),
                    _cpu_id().encode(), sys.platform.encode()])
    ).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        obj = tmp[:-3] + ".o"
        compile_cmd = [cc, *FLAGS, *extra_flags, "-c", str(source), "-o", obj]
        cmd = [cc, *LINK, obj, "-o", tmp, "-lm"]
        try:
            subprocess.run(compile_cmd, check=True, capture_output=True, text=True)
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            os.replace(tmp, target)
        except (OSError, subprocess.CalledProcessError) as err:
            os.unlink(tmp)
            cmd = compile_cmd if not os.path.exists(obj) else cmd
            detail = getattr(err, "stderr", "") or str(err)
            warnings.warn(f"building {source} failed ({' '.join(cmd)}): {detail.strip()[:500]}; "
                          f"{name} runs its slower torch fallback", stacklevel=2)
            return None
        finally:
            if os.path.exists(obj):
                os.unlink(obj)
    return ctypes.CDLL(str(target))
