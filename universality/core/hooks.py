"""Named hook sites for reading or replacing activations (architecture-agnostic).

A model exposes ``model.hook_points``: a dict ``{name: HookPoint}`` with names such as
``blocks.3.hook_resid_post`` (see DESIGN.md "Hook sites"). A ``HookPoint`` is an identity module
placed on the forward path, so standard torch forward hooks can observe or replace the tensor
flowing through it (the TransformerLens pattern), without monkey patching any library code.

    with hooks(model, {"blocks.0.hook_resid_post": lambda t, name: t * 0}):
        logits = model(input_ids)

    logits, cache = run_with_cache(model, input_ids, ["blocks.0.hook_resid_post"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["HookFn", "HookPoint", "hook_points", "hooks", "run_with_cache"]

#: ``fn(tensor, name) -> tensor | None``; a returned tensor replaces the value at the site.
HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity module marking a named activation site. Has no parameters or buffers."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True if any forward hook is registered (models may skip costly sites otherwise)."""
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)

    def extra_repr(self) -> str:
        return repr(self.name)


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """The model's ``{name: HookPoint}`` dict (``model.hook_points``), validated."""
    points = getattr(model, "hook_points", None)
    if not isinstance(points, Mapping):
        raise TypeError(f"{type(model).__name__} has no `hook_points` dict of HookPoint modules")
    return dict(points)


def _check_names(points: Mapping[str, HookPoint], names: Iterable[str]) -> None:
    unknown = [n for n in names if n not in points]
    if unknown:
        raise KeyError(f"unknown hook point(s) {unknown}; valid names: {list(points)}")


def _as_forward_hook(fn: HookFn, name: str):
    def forward_hook(module, args, output):
        return fn(output, name)

    return forward_hook


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn | Sequence[HookFn]]):
    """Register ``fn(tensor, name)`` forward hooks on named sites for the ``with`` block.

    ``fns`` maps a hook-point name to one function or a sequence of functions (applied in
    order, each seeing the previous one's result). A function returning a tensor replaces the
    site's value for the rest of the forward pass; returning None leaves it unchanged. Hooks are
    always removed on exit, also after an exception. Unknown names raise KeyError (listing the
    valid names) before anything is registered.
    """
    points = hook_points(model)
    _check_names(points, fns)
    handles = []
    try:
        for name, fn_or_fns in fns.items():
            seq = fn_or_fns if isinstance(fn_or_fns, Sequence) else [fn_or_fns]
            for fn in seq:
                handles.append(points[name].register_forward_hook(_as_forward_hook(fn, name)))
        yield model
    finally:
        for h in handles:
            h.remove()


def _logits_of(out):
    """Models return a logits tensor; transformers models return an output with ``.logits``."""
    if isinstance(out, torch.Tensor):
        return out
    return getattr(out, "logits", out)


def run_with_cache(model: nn.Module, input_ids: torch.Tensor, names: Iterable[str] | None = None,
                   *, fwd_hooks: Mapping[str, HookFn | Sequence[HookFn]] | None = None,
                   grad: bool = False, detach: bool = True, **forward_kwargs):
    """Run ``model(input_ids, **forward_kwargs)`` and record the values at the named sites.

    Args:
        names: hook-point names to record (None: every site of the model).
        fwd_hooks: extra ``{name: fn}`` hooks (e.g. patches) active during the run; they are
            registered first, so a recorded site holds the patched value.
        grad: run with autograd enabled (default: under ``torch.no_grad()``).
        detach: store detached tensors (ignored when grad is False).

    Returns:
        (logits, cache): whatever the model returns as logits (e.g. [batch, pos, vocab]) and
        ``{name: tensor}`` with each site's value as it left the site.
    """
    points = hook_points(model)
    names = list(points) if names is None else list(names)
    _check_names(points, names)
    cache: dict[str, torch.Tensor] = {}

    def record(t: torch.Tensor, name: str) -> None:
        cache[name] = t.detach() if (detach or not grad) else t

    all_fns: dict[str, list[HookFn]] = {}
    for name, fn_or_fns in (fwd_hooks or {}).items():
        seq = fn_or_fns if isinstance(fn_or_fns, Sequence) else [fn_or_fns]
        all_fns.setdefault(name, []).extend(seq)
    for name in names:
        all_fns.setdefault(name, []).append(record)
    with hooks(model, all_fns), torch.set_grad_enabled(grad):
        out = model(input_ids, **forward_kwargs)
    return _logits_of(out), cache
