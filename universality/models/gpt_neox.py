"""Instrumented GPT-NeoX language model in plain torch, weight-compatible with transformers.

``NeoXLM`` has exactly the parameter names and shapes of ``transformers.GPTNeoXForCausalLM``
(``gpt_neox.embed_in``, ``gpt_neox.layers.{l}.{input_layernorm, post_attention_layernorm,
attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h}``,
``gpt_neox.final_layer_norm``, ``lm_head``; checkpoints on disk and Pythia call the head
``embed_out``, which is accepted), so a transformers state dict loads with
``load_hf_state_dict``. It reproduces the transformers forward (no cache, no padding mask, default
RoPE with any ``partial_rotary_factor``, parallel or sequential residual) and exposes per-head
hook sites (``universality.core.hooks``):

    blocks.{l}.hook_resid_pre                 block input                     [batch, pos, d_model]
    blocks.{l}.attn.hook_q, hook_k            after RoPE                      [batch, pos, head, d_head]
    blocks.{l}.attn.hook_v                                                    [batch, pos, head, d_head]
    blocks.{l}.attn.hook_pattern              softmax attention               [batch, head, q, k]
    blocks.{l}.attn.hook_z                    pattern @ v, per head           [batch, pos, head, d_head]
    blocks.{l}.attn.hook_result               each head's write, W_O^h z^h    [batch, pos, head, d_model]
    blocks.{l}.hook_attn_out                  sum of hook_result + dense bias [batch, pos, d_model]
    blocks.{l}.hook_resid_mid                 resid_pre + attn_out            [batch, pos, d_model]
    blocks.{l}.mlp.hook_pre, mlp.hook_post    MLP before / after activation   [batch, pos, d_mlp]
    blocks.{l}.hook_mlp_out                                                   [batch, pos, d_model]
    blocks.{l}.hook_resid_post                block output                    [batch, pos, d_model]

With ``use_parallel_residual`` (Pythia, our toy zoo) the MLP reads LayerNorm(resid_pre), so
``hook_resid_mid`` lies only on the path resid_pre + attn -> resid_post (resid_post =
resid_mid + mlp_out); sequentially the MLP reads LayerNorm(resid_mid), as in transformers.

``hook_result`` is the only site that costs extra: [batch, pos, head, d_model] is materialised
only when a hook is registered on it (otherwise the heads are summed by one matmul, as
transformers does). A replaced ``hook_z`` or ``hook_result`` is honoured either way.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from universality.core.hooks import HookPoint

__all__ = ["NeoXLM", "ATTN_HOOKS", "BLOCK_HOOKS", "MLP_HOOKS"]

ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z", "hook_result")
MLP_HOOKS = ("hook_pre", "hook_post")
BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


def _act(name: str):
    from transformers.activations import ACT2FN  # the exact activation transformers uses

    return ACT2FN[name]


def _rope_dims(config) -> tuple[int, float]:
    """(rotary dims per head, base) from ``config.rope_parameters`` (transformers 5 layout)."""
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"only rope_type 'default' is supported, got {kind!r}")
    head = config.hidden_size // config.num_attention_heads
    return int(head * rope.get("partial_rotary_factor", 1.0)), float(rope.get("rope_theta", 10000.0))


class Attention(nn.Module):
    """Causal multi-head attention with RoPE; parameters named as ``GPTNeoXAttention``."""

    def __init__(self, config, layer: int):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.d_head = config.hidden_size // self.n_heads
        self.rotary_ndims, base = _rope_dims(config)
        inv = 1.0 / (base ** (torch.arange(0, self.rotary_ndims, 2, dtype=torch.float) / self.rotary_ndims))
        self.register_buffer("inv_freq", inv, persistent=False)
        bias = getattr(config, "attention_bias", True)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=bias)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        for name in ATTN_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer}.attn.{name}"))

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """RoPE on the first ``rotary_ndims`` dims of x [batch, pos, head, d_head]."""
        r = self.rotary_ndims
        if r == 0:
            return x
        pos = torch.arange(x.shape[1], device=x.device, dtype=torch.float)
        freqs = pos[:, None] * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)                  # [pos, r]
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        rot, keep = x[..., :r], x[..., r:]
        half = torch.cat((-rot[..., r // 2:], rot[..., : r // 2]), dim=-1)
        return torch.cat((rot * cos + half * sin, keep), dim=-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, pos, d_model] (already normalised) -> attention output [batch, pos, d_model]."""
        b, n, _ = hidden.shape
        # transformers' layout: per head, [q | k | v] of d_head each.
        qkv = self.query_key_value(hidden).view(b, n, self.n_heads, 3 * self.d_head)
        q, k, v = qkv.chunk(3, dim=-1)                          # [b, pos, head, d_head]
        q = self.hook_q(self._rotate(q))
        k = self.hook_k(self._rotate(k))
        v = self.hook_v(v)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.d_head ** -0.5
        causal = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        pattern = self.hook_pattern(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))   # [b, pos, head, d_head]
        if self.hook_result.active:
            w = self.dense.weight.view(-1, self.n_heads, self.d_head)  # [d_model, head, d_head]
            result = self.hook_result(torch.einsum("bqhd,mhd->bqhm", z, w))
            out = result.sum(2)
            return out if self.dense.bias is None else out + self.dense.bias
        return self.dense(z.reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, config, layer: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _act(config.hidden_act)
        for name in MLP_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer}.mlp.{name}"))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.dense_h_to_4h(hidden))
        return self.dense_4h_to_h(self.hook_post(self.act(pre)))


class Block(nn.Module):
    """Pre-norm block, parameters named as ``GPTNeoXLayer``."""

    def __init__(self, config, layer: int):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config, layer)
        self.mlp = MLP(config, layer)
        for name in BLOCK_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer}.{name}"))

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        attn = self.hook_attn_out(self.attention(self.input_layernorm(resid)))
        mid = self.hook_resid_mid(resid + attn)
        mlp_in = resid if self.use_parallel_residual else mid
        mlp = self.hook_mlp_out(self.mlp(self.post_attention_layernorm(mlp_in)))
        return self.hook_resid_post(mid + mlp)


class _Backbone(nn.Module):
    """Container so that parameter names match ``GPTNeoXForCausalLM.gpt_neox``."""

    def __init__(self, config):
        super().__init__()
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, l) for l in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class NeoXLM(nn.Module):
    """GPT-NeoX causal LM with hook sites; same state dict as ``transformers.GPTNeoXForCausalLM``."""

    def __init__(self, config):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.gpt_neox = _Backbone(self.config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.gpt_neox.embed_in.weight
        #: ``{name: HookPoint}`` for ``universality.core.hooks``, in forward order.
        self.hook_points: dict[str, HookPoint] = {}
        for block in self.gpt_neox.layers:
            order = [block.hook_resid_pre, *(getattr(block.attention, h) for h in ATTN_HOOKS),
                     block.hook_attn_out, block.hook_resid_mid,
                     *(getattr(block.mlp, h) for h in MLP_HOOKS), block.hook_mlp_out, block.hook_resid_post]
            self.hook_points.update({p.name: p for p in order})

    @property
    def n_layers(self) -> int:
        return len(self.gpt_neox.layers)

    @property
    def n_heads(self) -> int:
        return self.config.num_attention_heads

    def load_hf_state_dict(self, state_dict: dict) -> None:
        """Load a ``GPTNeoXForCausalLM`` state dict, in memory (``lm_head``) or on disk
        (``embed_out``) naming; stored rotary/mask buffers of old checkpoints are ignored."""
        state_dict = {("lm_head.weight" if k == "embed_out.weight" else k): v for k, v in state_dict.items()
                      if not k.endswith(("inv_freq", "masked_bias", "attention.bias"))}
        if self.lm_head.weight is self.gpt_neox.embed_in.weight and "lm_head.weight" not in state_dict:
            state_dict["lm_head.weight"] = state_dict["gpt_neox.embed_in.weight"]
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")

    @classmethod
    def from_hf(cls, model) -> "NeoXLM":
        """Copy of a ``transformers.GPTNeoXForCausalLM`` (same dtype and device, eval mode)."""
        ours = cls(model.config)
        ours.load_hf_state_dict(dict(model.state_dict()))
        p = next(model.parameters())
        return ours.to(device=p.device, dtype=p.dtype).eval()

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32) -> "NeoXLM":
        """Load a ``save_pretrained`` directory from safetensors only (no pickle, no remote code)."""
        from safetensors.torch import load_file
        from transformers import GPTNeoXConfig

        path = Path(path)
        config = GPTNeoXConfig.from_pretrained(str(path))
        index = path / "model.safetensors.index.json"
        if index.exists():
            files = [path / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        elif (path / "model.safetensors").exists():
            files = [path / "model.safetensors"]
        else:
            raise FileNotFoundError(f"no model.safetensors in {path} (pickle checkpoints are not read)")
        state = {}
        for f in files:
            state.update({k: v.to(dtype) for k, v in load_file(str(f)).items()})
        model = cls(config).to(dtype)
        model.load_hf_state_dict(state)
        return model.eval()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> logits [batch, pos, vocab] float32."""
        resid = self.gpt_neox.embed_in(input_ids)
        for block in self.gpt_neox.layers:
            resid = block(resid)
        return self.lm_head(self.gpt_neox.final_layer_norm(resid)).float()
