"""Adam over plain tensors whose state round-trips through safetensors (no pickle)."""
from __future__ import annotations

import torch

__all__ = ["Adam"]


class Adam:
    """``torch.optim.Adam`` (fused kernel where available) over plain tensors, with gradients
    handed in by the caller, and a state (moments + step count) that round-trips through
    safetensors without pickle. Same update as ``torch.optim.Adam``: no weight decay."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        self.params = [p if isinstance(p, torch.nn.Parameter) else torch.nn.Parameter(p, requires_grad=False)
                       for p in params]
        kw = dict(lr=float(lr), betas=tuple(float(b) for b in betas), eps=float(eps))
        if fused is None:
            fused = self.params[0].device.type in ("cpu", "cuda")
        try:
            self.opt = torch.optim.Adam(self.params, fused=bool(fused), **kw)
        except (RuntimeError, TypeError):  # no fused kernel for this device/torch
            self.opt = torch.optim.Adam(self.params, foreach=False, **kw)
        self.lr = float(lr)

    @property
    def t(self) -> int:
        st = self.opt.state.get(self.params[0])
        return int(st["step"]) if st else 0

    @torch.no_grad()
    def step(self, grads, lr: float | None = None) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.param_groups[0]["lr"] = self.lr if lr is None else float(lr)
        self.opt.step()
        for p in self.params:
            p.grad = None

    def state_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for n, p in zip(names, self.params):
            st = self.opt.state.get(p)
            if st:
                out[f"adam.m.{n}"] = st["exp_avg"]
                out[f"adam.v.{n}"] = st["exp_avg_sq"]
                out[f"adam.step.{n}"] = torch.as_tensor(st["step"]).reshape(1).float()
        return out

    def load_state_tensors(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        group = self.opt.param_groups[0]
        for n, p in zip(names, self.params):
            if f"adam.m.{n}" not in tensors:
                continue
            step = tensors[f"adam.step.{n}"].reshape(()).to(torch.float32)
            if group.get("fused") or group.get("capturable"):
                step = step.to(p.device)
            self.opt.state[p] = {"step": step.clone(),
                                 "exp_avg": tensors[f"adam.m.{n}"].to(p).clone(),
                                 "exp_avg_sq": tensors[f"adam.v.{n}"].to(p).clone()}
