"""Adam over plain tensors whose state round-trips through safetensors (no pickle).

Why not ``torch.optim.Adam`` itself: constructing any ``torch.optim`` optimiser imports
``torch._dynamo`` (its methods are wrapped in ``torch._disable_dynamo``), 1.7 s of CPU in
every SAE job, more than a fifth of a toy SAE's training loop (measured with py-spy on the
default's ``train_sae`` jobs). On CPU and CUDA the step here calls the same fused kernel that
``torch.optim.Adam(fused=True)`` calls (``torch._fused_adam_``, state steps incremented first),
so the update is bitwise that optimiser's (``tests/sae/test_sae.py``); elsewhere (no fused
kernel) it falls back to ``torch.optim.Adam(foreach=False)``.
"""
from __future__ import annotations

import torch

__all__ = ["Adam"]


class Adam:
    """Adam without weight decay over ``params`` (tensors, updated in place), with gradients
    handed in by the caller. State: ``exp_avg``, ``exp_avg_sq`` (like each param) and a float32
    scalar step count per param, created on the first step (as ``torch.optim.Adam``)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        self.params = [p if isinstance(p, torch.nn.Parameter) else torch.nn.Parameter(p, requires_grad=False)
                       for p in params]
        self.lr = float(lr)
        self.betas = tuple(float(b) for b in betas)
        self.eps = float(eps)
        if fused is None:
            fused = self.params[0].device.type in ("cpu", "cuda")
        self.state: dict[int, dict[str, torch.Tensor]] = {}  # index into params -> moments, step
        self._fallback = None  # torch.optim.Adam where there is no fused kernel
        if not (fused and hasattr(torch, "_fused_adam_")):
            self._fallback = torch.optim.Adam(self.params, foreach=False, lr=self.lr, betas=self.betas, eps=self.eps)

    @property
    def t(self) -> int:
        st = self._state_of(0)
        return int(st["step"]) if st else 0

    def _state_of(self, i: int) -> dict | None:
        if self._fallback is not None:
            return self._fallback.state.get(self.params[i])
        return self.state.get(i)

    @torch.no_grad()
    def step(self, grads, lr: float | None = None) -> None:
        lr = self.lr if lr is None else float(lr)
        if self._fallback is not None:
            for p, g in zip(self.params, grads):
                p.grad = g
            self._fallback.param_groups[0]["lr"] = lr
            self._fallback.step()
            for p in self.params:
                p.grad = None
            return
        for i, p in enumerate(self.params):
            if i not in self.state:
                self.state[i] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        states = [self.state[i] for i in range(len(self.params))]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_([p.data for p in self.params], list(grads), [s["exp_avg"] for s in states],
                           [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=lr,
                           beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           maximize=False, grad_scale=None, found_inf=None)

    def state_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for i, n in enumerate(names):
            st = self._state_of(i)
            if st:
                out[f"adam.m.{n}"] = st["exp_avg"]
                out[f"adam.v.{n}"] = st["exp_avg_sq"]
                out[f"adam.step.{n}"] = torch.as_tensor(st["step"]).reshape(1).float()
        return out

    def load_state_tensors(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        for i, (n, p) in enumerate(zip(names, self.params)):
            if f"adam.m.{n}" not in tensors:
                continue
            step = tensors[f"adam.step.{n}"].reshape(()).to(torch.float32)
            st = {"step": step.to(p.device).clone() if self._fallback is None else step.clone(),
                  "exp_avg": tensors[f"adam.m.{n}"].to(p).clone(),
                  "exp_avg_sq": tensors[f"adam.v.{n}"].to(p).clone()}
            if self._fallback is not None:
                self._fallback.state[p] = st
            else:
                self.state[i] = st
