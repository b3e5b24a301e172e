"""Instrumented Mamba language model in plain torch, weight-compatible with transformers.

``MambaLM`` has exactly the parameter names and shapes of ``transformers.MambaForCausalLM``
(``backbone.embeddings.weight``, ``backbone.layers.{i}.norm.weight``,
``backbone.layers.{i}.mixer.{in_proj,conv1d,x_proj,dt_proj,A_log,D,out_proj}``,
``backbone.norm_f.weight``, ``lm_head.weight`` tied to the embeddings when
``config.tie_word_embeddings``), so state dicts move both ways with ``load_state_dict``. It
reproduces the transformers forward (no cache, no attention mask) to float32 rounding, but uses
the fast selective scan of ``universality.models.scan`` (a hand-written backward) and exposes named
hook sites (``universality.core.hooks``):

    blocks.{l}.hook_resid_pre, blocks.{l}.hook_resid_post        [batch, pos, d_model]
    blocks.{l}.mixer.hook_conv_in   x, in_proj half before the conv      [batch, pos, d_inner]
    blocks.{l}.mixer.hook_gate_in   z, in_proj half used for the gate    [batch, pos, d_inner]
    blocks.{l}.mixer.hook_ssm_in    c = SiLU(causal conv(x)), SSM input  [batch, pos, d_inner]
    blocks.{l}.mixer.hook_delta     step size, softplus(dt_proj(.))      [batch, pos, d_inner]
    blocks.{l}.mixer.hook_B, hook_C input-dependent SSM matrices         [batch, pos, d_state]
    blocks.{l}.mixer.hook_state     h_t at every position                [batch, pos, d_inner, d_state]
    blocks.{l}.mixer.hook_ssm_out   y = <h_t, C_t> + D * c, before gating [batch, pos, d_inner]
    blocks.{l}.mixer.hook_gate      SiLU(z)                               [batch, pos, d_inner]
    blocks.{l}.mixer.hook_gated     gated output y * SiLU(z), out_proj input [batch, pos, d_inner]
    blocks.{l}.mixer.hook_out       out_proj(y * SiLU(z))                [batch, pos, d_model]

Hooks on ``hook_delta``/``hook_B``/``hook_C``/``hook_ssm_in`` feed the scan, so a replaced value
changes the states and everything after.

``hook_state`` is special: states are only materialised when a hook is registered on it (they
are [batch, pos, d_inner, d_state], 16x an activation). The hook receives a copy of the clean
states of the whole sequence. If it returns (or edits in place) a tensor that differs from
them, every changed element is an override and the recurrence is re-run from the first changed
position: unchanged elements become dA_t * h'_{t-1} + dBu_t, so patching the state at position t
propagates to all later positions of that layer, positions before t are untouched, and the
output y is recomputed from the patched states (see ``ssm_states.propagate_state_patch``). Patching one
layer's states therefore works like patching any other site. Cost: a hooked ``hook_state`` keeps
~3 [batch, pos, d_inner, d_state] tensors, and a patch re-runs that layer's recurrence with a
Python loop over positions (fine for analysis; autograd works through it).

Layout: the model runs TIME-MAJOR internally ([pos, batch, ...], the scan's native layout, so no
transposing copies). Hook functions still receive and return [batch, pos, ...] tensors: they get
a transposed *view* of the forward's tensor (possibly non-contiguous; clone before mutating it
if you keep it). ``forward`` takes and returns batch-major tensors.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from universality.core.hooks import HookPoint
from universality.models.registry import Architecture, hf_config, read_config, register
from universality.models.scan import DEFAULT_CHUNK, selective_scan, uses_kernel
from universality.models.ssm_states import first_changed_position, propagate_state_patch, states_to_output

#: config.json keys our forward reads: a config.json stating all of them is read without
#: transformers (registry.read_config).
CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "state_size", "conv_kernel",
               "time_step_rank", "use_bias", "use_conv_bias", "hidden_act", "layer_norm_epsilon",
               "residual_in_fp32", "tie_word_embeddings", "vocab_size")

__all__ = ["MambaLM", "MambaBlock", "MambaMixer", "RMSNorm", "CausalConvSiLU", "causal_conv_silu",
           "MIXER_HOOKS", "BLOCK_HOOKS", "Mamba", "ADAPTER"]

#: Hook names inside a mixer (prefix ``blocks.{l}.mixer.``) and a block (prefix ``blocks.{l}.``).
MIXER_HOOKS = ("hook_conv_in", "hook_gate_in", "hook_ssm_in", "hook_delta", "hook_B", "hook_C",
               "hook_state", "hook_ssm_out", "hook_gate", "hook_gated", "hook_out")
BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_post")


class RMSNorm(nn.Module):
    """RMS norm computed in float32, identical to transformers' ``MambaRMSNorm``."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # Same formula in one op (fewer autograd nodes); other dtypes follow transformers.
            return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)
        input_dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(input_dtype)


def _site(point: HookPoint, t_major: torch.Tensor) -> torch.Tensor:
    """Pass a TIME-MAJOR tensor [pos, batch, ...] through a hook site that speaks batch-major.

    The model runs time-major internally (the scan's native layout: no transposing copies);
    hooks see a [batch, pos, ...] view and may return a replacement in that layout. Without a
    hook this is a no-op (not even a module call).
    """
    if not point.active:
        return t_major
    return point(t_major.transpose(0, 1)).transpose(0, 1)


class CausalConvSiLU(torch.autograd.Function):
    """c = SiLU(causal depthwise conv(x)), TIME-MAJOR, with a hand-written backward.

    x [pos, batch, d]; weight [d, 1, K] (``nn.Conv1d`` layout); bias [d] or None. Computes
    pre_t = bias + sum_k weight[:, 0, k] * x_{t - (K - 1) + k}  (x_s = 0 for s < 0), i.e. exactly
    ``nn.Conv1d(d, d, K, groups=d, padding=K - 1)`` truncated to the first ``pos`` outputs, then
    c = SiLU(pre). In time-major layout a shift is a contiguous slice, so the conv is K in-place
    multiply-adds; the custom backward avoids autograd's zero-filled slice gradients.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        K = weight.shape[-1]
        # Taps as contiguous rows [K, d]: a strided [d] broadcast operand (weight[:, 0, k])
        # falls off torch's vectorised loops and is ~3x slower.
        w = weight[:, 0, :].t().contiguous()
        pre = x * w[K - 1] if bias is None else torch.addcmul(bias, x, w[K - 1])
        for k in range(K - 1):
            s = K - 1 - k                                       # how far back tap k looks
            if s < x.shape[0]:
                pre[s:].addcmul_(x[:-s], w[k])
        ctx.save_for_backward(x, weight, pre)
        ctx.has_bias = bias is not None
        return F.silu(pre)

    @staticmethod
    def backward(ctx, gc):
        x, weight, pre = ctx.saved_tensors
        K = weight.shape[-1]
        w = weight[:, 0, :].t().contiguous()                    # [K, d]
        g = torch.ops.aten.silu_backward(gc, pre)               # dLoss/d pre
        gx = g * w[K - 1]
        gw = torch.zeros_like(w)                                # [K, d]
        gw[K - 1] = (g * x).sum((0, 1))
        for k in range(K - 1):
            s = K - 1 - k
            if s < x.shape[0]:
                gx[:-s].addcmul_(g[s:], w[k])
                gw[k] = (g[s:] * x[:-s]).sum((0, 1))
        gb = g.sum((0, 1)) if ctx.has_bias else None
        return gx, gw.t().unsqueeze(1), gb


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """SiLU(causal depthwise conv(x)) for TIME-MAJOR x [pos, batch, d] (see ``CausalConvSiLU``)."""
    return CausalConvSiLU.apply(x.contiguous(), weight, bias)


class MambaMixer(nn.Module):
    """Mamba mixer (in_proj -> causal conv -> selective SSM -> gate -> out_proj) with hook sites.

    Parameters are named and shaped as in ``transformers.models.mamba.MambaMixer``. ``forward``
    works on TIME-MAJOR tensors [pos, batch, d_model]; hook sites see [batch, pos, ...].
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.d_state = config.state_size
        self.d_conv = config.conv_kernel
        self.d_inner = config.intermediate_size
        self.dt_rank = int(config.time_step_rank)
        if config.hidden_act != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, got {config.hidden_act!r}")
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=self.d_conv,
                                groups=self.d_inner, padding=self.d_conv - 1,
                                bias=config.use_conv_bias)
        self.in_proj = nn.Linear(self.hidden_size, 2 * self.d_inner, bias=config.use_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, self.hidden_size, bias=config.use_bias)
        for name in MIXER_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer_idx}.mixer.{name}"))
        #: positions per scan chunk (speed knob, see ``scan.DEFAULT_CHUNK``)
        self.scan_chunk = DEFAULT_CHUNK

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [pos, batch, d_model] (already normalised) -> [pos, batch, d_model]."""
        dtype = hidden.dtype
        # in_proj as two matmuls over the weight's halves (x rows first, then z, as in
        # transformers' chunk): same numbers, but no [pos, b, 2 * d_inner] slice gradients.
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        b_x, b_z = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        x = _site(self.hook_conv_in, F.linear(hidden, w_x, b_x))   # [pos, b, d_inner]
        z = _site(self.hook_gate_in, F.linear(hidden, w_z, b_z))
        c = causal_conv_silu(x, self.conv1d.weight, self.conv1d.bias)
        c = _site(self.hook_ssm_in, c)                             # [pos, b, d_inner]
        dt, B, C = torch.split(self.x_proj(c), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # transformers adds the dt bias in float32 before the softplus.
        delta = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias.float()))
        delta = _site(self.hook_delta, delta)
        B = _site(self.hook_B, B)
        C = _site(self.hook_C, C)
        A = -torch.exp(self.A_log.float())                         # [d_inner, d_state]
        D = self.D.float()
        if self.hook_state.active:
            y = self._scan_with_state_hook(c, delta, A, B, C, D)
        else:
            y = selective_scan(c, delta, A, B, C, D, chunk=self.scan_chunk, time_major=True)
        y = _site(self.hook_ssm_out, y.to(dtype))
        gate = _site(self.hook_gate, F.silu(z))
        gated = _site(self.hook_gated, y * gate)
        return _site(self.hook_out, self.out_proj(gated))

    def _scan_with_state_hook(self, c, delta, A, B, C, D):
        """Scan that materialises h_t, shows it to ``hook_state`` and honours replacements.

        Time-major in and out; the hook and the patch propagation see batch-major views.
        The unpatched outputs are those of the unhooked forward (the C kernel where it runs), so
        that recording ``hook_state`` leaves the logits bit-identical; the states come from the
        torch scan (the kernel keeps none), which agrees with the kernel to float32 rounding.
        """
        y, states = selective_scan(c, delta, A, B, C, D, return_states=True,
                                   chunk=self.scan_chunk, time_major=True)
        if uses_kernel(c):  # the unhooked forward's numbers come from the kernel
            y = selective_scan(c, delta, A, B, C, D, chunk=self.scan_chunk, time_major=True)
        states = states.transpose(0, 1)                            # [b, pos, d_inner, d_state]
        # The hook sees a copy, so in-place edits are detected by comparing with `states`.
        seen = self.hook_state(states.clone()).to(states.dtype)
        t0 = first_changed_position(states, seen)
        if t0 is None:
            return y
        c, delta, B, C = (t.transpose(0, 1) for t in (c, delta, B, C))
        patched = propagate_state_patch(c, delta, A, B, states, seen)
        # Outputs before the first override are kept exactly as the scan computed them.
        y_new = states_to_output(patched[:, t0:], C[:, t0:], c[:, t0:], D)
        return torch.cat([y[:t0], y_new.transpose(0, 1).to(y.dtype)], dim=0)


class MambaBlock(nn.Module):
    """Pre-norm residual block: resid_post = resid_pre + mixer(RMSNorm(resid_pre)).

    ``forward`` works on TIME-MAJOR tensors [pos, batch, d_model].
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = MambaMixer(config, layer_idx)
        for name in BLOCK_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer_idx}.{name}"))

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = _site(self.hook_resid_pre, resid)
        hidden = self.norm(resid.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:  # as transformers: the residual sum is kept in float32
            resid = resid.to(torch.float32)
        return _site(self.hook_resid_post, resid + self.mixer(hidden))


class _Backbone(nn.Module):
    """Container so that parameter names match ``MambaForCausalLM.backbone``."""

    def __init__(self, config):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MambaBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)


def _normalise_hf_keys(state_dict: dict) -> dict:
    """Accept old checkpoints that call the embedding ``backbone.embedding.weight``."""
    return {k.replace("backbone.embedding.", "backbone.embeddings."): v
            for k, v in state_dict.items()}


class MambaLM(nn.Module):
    """Mamba causal LM; same state dict as ``transformers.MambaForCausalLM``.

    Args:
        config: a ``transformers.MambaConfig`` (copied).
        init_weights: initialise parameters with the distributions transformers uses
            (``MambaPreTrainedModel._init_weights``); False leaves them uninitialised (for loading).
    """

    def __init__(self, config, init_weights: bool = True):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.backbone = _Backbone(self.config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.backbone.embeddings.weight
        #: ``{name: HookPoint}`` for ``universality.core.hooks`` (in forward order).
        self.hook_points: dict[str, HookPoint] = {}
        for i, block in enumerate(self.backbone.layers):
            self.hook_points[f"blocks.{i}.hook_resid_pre"] = block.hook_resid_pre
            for name in MIXER_HOOKS:
                self.hook_points[f"blocks.{i}.mixer.{name}"] = getattr(block.mixer, name)
            self.hook_points[f"blocks.{i}.hook_resid_post"] = block.hook_resid_post
        if init_weights:
            self.reset_parameters()

    # ------------------------------------------------------------------ construction / io
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise like transformers: normal(0, initializer_range) for embeddings and
        linears, kaiming-uniform conv1d/out_proj, S4D-real A_log, D = 1, dt bias = softplus^-1
        of log-uniform [time_step_min, time_step_max] steps."""
        cfg = self.config
        std = cfg.initializer_range or 0.02
        nn.init.normal_(self.backbone.embeddings.weight, 0.0, std)
        if self.lm_head.weight is not self.backbone.embeddings.weight:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        for norm in [b.norm for b in self.backbone.layers] + [self.backbone.norm_f]:
            nn.init.ones_(norm.weight)
        for block in self.backbone.layers:
            m = block.mixer
            for lin in (m.in_proj, m.x_proj):
                nn.init.normal_(lin.weight, 0.0, std)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
            nn.init.kaiming_uniform_(m.conv1d.weight, a=math.sqrt(5))
            if m.conv1d.bias is not None:
                nn.init.zeros_(m.conv1d.bias)
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            if m.out_proj.bias is not None:
                nn.init.zeros_(m.out_proj.bias)
            if cfg.rescale_prenorm_residual:
                m.out_proj.weight /= math.sqrt(cfg.num_hidden_layers)
            A = torch.arange(1, m.d_state + 1, dtype=torch.float32).expand(m.d_inner, -1)
            m.A_log.copy_(torch.log(A))
            nn.init.ones_(m.D)
            dt_init_std = cfg.time_step_rank ** -0.5 * cfg.time_step_scale
            if cfg.time_step_init_scheme == "constant":
                nn.init.constant_(m.dt_proj.weight, dt_init_std)
            elif cfg.time_step_init_scheme == "random":
                nn.init.uniform_(m.dt_proj.weight, -dt_init_std, dt_init_std)
            else:
                nn.init.normal_(m.dt_proj.weight, 0.0, std)
            dt = torch.exp(torch.rand(m.d_inner)
                           * (math.log(cfg.time_step_max) - math.log(cfg.time_step_min))
                           + math.log(cfg.time_step_min)).clamp(min=cfg.time_step_floor)
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def load_hf_state_dict(self, state_dict: dict) -> None:
        """Load a ``MambaForCausalLM`` state dict (``lm_head.weight`` may be absent if tied)."""
        state_dict = _normalise_hf_keys(state_dict)
        tied = self.lm_head.weight is self.backbone.embeddings.weight
        if tied and "lm_head.weight" not in state_dict:
            state_dict = {**state_dict, "lm_head.weight": state_dict["backbone.embeddings.weight"]}
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")

    @classmethod
    def from_hf(cls, model) -> "MambaLM":
        """Copy of a ``transformers.MambaForCausalLM`` (same dtype, same train/eval mode)."""
        ours = cls(model.config, init_weights=False)
        ours.load_hf_state_dict(model.state_dict())
        p = next(model.parameters())
        return ours.to(device=p.device, dtype=p.dtype).train(model.training)

    def to_hf(self):
        """An equal-weight ``transformers.MambaForCausalLM`` (e.g. to ``save_pretrained``)."""
        from transformers import MambaForCausalLM

        hf = MambaForCausalLM(hf_config(self.config))
        hf.load_state_dict(self.state_dict())
        p = next(self.parameters())
        return hf.to(device=p.device, dtype=p.dtype).train(self.training)

    def save_pretrained(self, path) -> None:
        """Write a transformers ``save_pretrained`` directory (config.json + model.safetensors)."""
        self.to_hf().save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = torch.float32) -> "MambaLM":
        """Load a ``save_pretrained`` directory with safetensors only (no pickle, no remote code).

        Args:
            path: directory with ``config.json`` and ``model.safetensors`` (or a sharded
                ``model.safetensors.index.json``).
            dtype: cast parameters to this dtype (None keeps the stored dtype).
        """
        from safetensors.torch import load_file

        path = Path(path)
        config = read_config(path, CONFIG_KEYS)
        index = path / "model.safetensors.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [path / s for s in shards]
        elif (path / "model.safetensors").exists():
            files = [path / "model.safetensors"]
        else:
            raise FileNotFoundError(f"no model.safetensors in {path} (pickle checkpoints are not read)")
        state_dict = {}
        for f in files:
            state_dict.update(load_file(str(f)))
        model = cls(config, init_weights=False)
        if dtype is None:
            dtype = state_dict["backbone.embeddings.weight"].dtype if \
                "backbone.embeddings.weight" in state_dict else torch.float32
        model.to(dtype)
        model.load_hf_state_dict({k: v.to(dtype) for k, v in state_dict.items()})
        return model.eval()

    # ------------------------------------------------------------------ forward
    @property
    def n_layers(self) -> int:
        return len(self.backbone.layers)

    def forward(self, input_ids: torch.Tensor, *, stop_at_layer: int | None = None) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> logits [batch, pos, vocab] float32.

        ``stop_at_layer=k`` runs only blocks 0..k-1 and returns their residual stream
        [batch, pos, d_model] (skips norm_f and the unembedding, e.g. for activation caching).
        """
        # Internally time-major [pos, batch, d_model]: the scan's layout (see _site).
        resid = self.backbone.embeddings(input_ids.t())
        for block in self.backbone.layers[:stop_at_layer]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid.transpose(0, 1).contiguous()
        hidden = self.backbone.norm_f(resid).transpose(0, 1).contiguous()
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()


class Mamba(Architecture):
    """Mamba: one forward (``MambaLM``, time-major inside) for every stage."""

    name = "mamba"
    circuits = "ssm"
    #: SiLU(conv(x)) and SiLU(z) side by side [batch, pos, 2 * d_inner], as the paper's script.
    neuron_hooks = ("blocks.{l}.mixer.hook_ssm_in", "blocks.{l}.mixer.hook_gate")

    def build_config(self, spec: dict, vocab_size: int, max_len: int, bos_id: int):
        from transformers import MambaConfig

        return MambaConfig(
            hidden_size=spec["d_model"],
            num_hidden_layers=spec["n_layers"],
            state_size=spec.get("d_state") or 16,
            expand=spec.get("expand") or 2,
            conv_kernel=spec.get("d_conv") or 4,
            use_cache=False,
            vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=bos_id,
        )

    def build(self, config) -> MambaLM:
        return MambaLM(config)

    def load(self, path: Path) -> MambaLM:
        return MambaLM.from_pretrained(path)

    def site_width(self, config, site: str) -> int:
        return config.hidden_size if site == "resid" else 2 * config.intermediate_size

    def embed(self, model, ids):
        return model.backbone.embeddings(ids)

    def run_blocks(self, model, resid, start=0):
        h = resid.transpose(0, 1)                       # the blocks run time-major (see _site)
        for block in model.backbone.layers[start:]:
            h = block(h)
        return h.transpose(0, 1)

    def unembed(self, model, resid):
        return model.lm_head(model.backbone.norm_f(resid).to(model.lm_head.weight.dtype)).float()


ADAPTER = register(Mamba())
