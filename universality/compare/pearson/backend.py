"""Backend choice: which device the Pearson sums live on, and its array module.

``backend="cpu"`` (NumPy/SciPy + C / numba), ``"cuda"`` (CuPy), ``"auto"`` (CUDA when CuPy
imports and a GPU is visible).  Bookkeeping (moments, exclusion, finalisation) is written once
against the array module returned by :func:`get_xp`; only the hot scatter differs.
"""
from __future__ import annotations

import numpy as np


def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


def resolve_backend(backend: str = "auto") -> str:
    """Map ``auto|cpu|cuda`` to ``cpu`` or ``cuda``; ``cuda`` fails loudly if unusable."""
    if backend not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "cpu":
        return "cpu"
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "backend='cuda' needs CuPy: install the gpu extra (pip install 'universality[gpu]', "
            "i.e. cupy-cuda12x) or use backend='cpu' / 'auto'"
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise RuntimeError(f"backend='cuda': CuPy is installed but no CUDA device is usable ({e})") from e
    if n < 1:
        raise RuntimeError("backend='cuda': CuPy is installed but no CUDA device is visible")
    return "cuda"


def get_xp(backend: str = "auto"):
    """The array module for ``backend``: :mod:`numpy` for CPU, :mod:`cupy` for CUDA."""
    if resolve_backend(backend) == "cuda":
        import cupy

        return cupy
    return np


def to_host(x) -> np.ndarray:
    """A NumPy copy of a CuPy array; NumPy arrays (and array-likes) as they are."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)
