"""The torch device of the config's ``backend: auto|cpu|cuda`` for the torch stages.

The torch stages (activation collection, SAE training and evaluation incl. CE-loss recovered,
feature encoding) put their model / SAE on :func:`torch_device` of ``backend``, move each batch
there and bring results back to the CPU (NumPy) before writing Zarr or safetensors. The Pearson
kernel reads the same key through :func:`universality.compare.pearson.resolve_backend` (CuPy), so on a
GPU node without CuPy ``auto`` runs the torch stages on CUDA and Pearson on the CPU.

The CUDA path is written for CUDA but has not yet been run on a GPU (this project's machines
have none); the CPU path is the tested one and its numbers do not depend on this module.

Determinism: on the CPU the stages are bit-reproducible for a fixed thread count. On CUDA,
results are deterministic only with ``torch.use_deterministic_algorithms(True)`` (and
``CUBLAS_WORKSPACE_CONFIG=:4096:8``), which we do not force because it can cost speed; CPU and
CUDA runs are not expected to agree bit for bit.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "cpu", "cuda")


def torch_device(backend: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` if ``torch.cuda.is_available()`` else ``cpu``; ``cpu`` -> ``cpu``;
    ``cuda`` -> ``cuda`` (the current CUDA device), or a :class:`RuntimeError` naming the
    ``backend`` key when torch sees no CUDA device. Anything else: :class:`ValueError`."""
    if backend not in BACKENDS:
        raise ValueError(f"config key 'backend' must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if backend == "auto":
        return torch.device("cpu")
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise RuntimeError(
        f"config key 'backend' is 'cuda' but torch sees no CUDA device (torch {torch.__version__}, "
        f"{build}; check CUDA_VISIBLE_DEVICES and the GPU request of the job); "
        "set backend: auto or cpu to run on the CPU"
    )


def as_device(device: str | torch.device) -> torch.device:
    """A :class:`torch.device` from a device or a device string (``"cpu"``, ``"cuda:0"``)."""
    return device if isinstance(device, torch.device) else torch.device(device)


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
