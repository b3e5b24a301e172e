"""Instrumented GPT-NeoX language model in plain torch, weight-compatible with transformers.

``NeoXLM`` has exactly the parameter names and shapes of ``transformers.GPTNeoXForCausalLM``
(``gpt_neox.embed_in``, ``gpt_neox.layers.{l}.{input_layernorm, post_attention_layernorm,
attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h}``,
``gpt_neox.final_layer_norm``, ``lm_head``; checkpoints on disk and Pythia call the head
``embed_out``, which is accepted), so a transformers state dict loads with
``load_hf_state_dict``. It reproduces the transformers forward (no cache, no padding mask, default
RoPE with any ``partial_rotary_factor``, parallel or sequential residual) bitwise, forward and
backward, unless a hook needs the explicit attention pattern (see ``Attention``), and exposes per-head
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
from universality.models.registry import Architecture, hf_config, read_config, register

#: config.json keys our forward reads: a config.json stating all of them is read without
#: transformers (registry.read_config).
CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "layer_norm_eps", "rope_parameters", "use_parallel_residual",
               "attention_bias", "tie_word_embeddings", "vocab_size")

__all__ = ["NeoXLM", "GPTNeoX", "ADAPTER", "ATTN_HOOKS", "BLOCK_HOOKS", "MLP_HOOKS"]

ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z", "hook_result")
MLP_HOOKS = ("hook_pre", "hook_post")
BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


def _act(name: str):
    """The activation transformers uses for ``hidden_act``. ``"gelu"`` (every toy and Pythia) is
    ``nn.GELU()``: transformers' ``GELUActivation`` calls the same ``F.gelu`` (bitwise: test), and
    importing ``transformers.activations`` costs ~1.1 CPU s in every job that loads a model."""
    if name == "gelu":
        return nn.GELU()
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def _rope_dims(config) -> tuple[int, float]:
    """(rotary dims per head, base) from ``config.rope_parameters`` (transformers 5 layout)."""
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"only rope_type 'default' is supported, got {kind!r}")
    head = config.hidden_size // config.num_attention_heads
    return int(head * rope.get("partial_rotary_factor", 1.0)), float(rope.get("rope_theta", 10000.0))


def _site(point: HookPoint, t: torch.Tensor) -> torch.Tensor:
    """Pass a head-major tensor [batch, head, pos, ...] through a hook site that speaks
    [batch, pos, head, ...] (a transposed view; a no-op without a hook)."""
    if not point.active:
        return t
    return point(t.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Causal multi-head attention with RoPE; parameters named as ``GPTNeoXAttention``.

    Two paths with the same result up to float32 rounding: without a hook on ``hook_pattern``,
    ``hook_z`` or ``hook_result`` it runs transformers' default (``sdpa``) op sequence, so logits
    and gradients are bitwise those of ``GPTNeoXForCausalLM``; with one, the explicit softmax
    that materialises the pattern.
    """

    def __init__(self, config, layer: int):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.d_head = config.hidden_size // self.n_heads
        self.scaling = self.d_head ** -0.5
        self.rotary_ndims, base = _rope_dims(config)
        inv = 1.0 / (base ** (torch.arange(0, self.rotary_ndims, 2, dtype=torch.float) / self.rotary_ndims))
        self.register_buffer("inv_freq", inv, persistent=False)
        self._tables = None
        bias = getattr(config, "attention_bias", True)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=bias)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        for name in ATTN_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer}.attn.{name}"))

    def _cos_sin(self, n: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables [1, 1, pos, rotary_ndims] for ``n`` positions, as ``GPTNeoXRotaryEmbedding``
        computes them (constants: kept for the last length, device and dtype seen)."""
        key = (n, x.device, x.dtype)
        if self._tables is None or self._tables[0] != key:
            pos = torch.arange(n, device=x.device)[None].float()
            freqs = pos[..., None] * self.inv_freq.to(device=x.device, dtype=torch.float)
            emb = torch.cat((freqs, freqs), dim=-1)              # [1, pos, r]
            self._tables = (key, emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None])
        return self._tables[1], self._tables[2]

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """RoPE on the first ``rotary_ndims`` dims of x [batch, head, pos, d_head], with
        transformers' ops (``apply_rotary_pos_emb``)."""
        r = self.rotary_ndims
        if r == 0:
            return x
        cos, sin = self._cos_sin(x.shape[2], x)
        rot, keep = x[..., :r], x[..., r:]
        half = torch.cat((-rot[..., r // 2:], rot[..., : r // 2]), dim=-1)
        return torch.cat([(rot * cos) + (half * sin), keep], dim=-1)

    @property
    def explicit(self) -> bool:
        """True when a hook needs the attention pattern or the per-head z / result."""
        return self.hook_pattern.active or self.hook_z.active or self.hook_result.active

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, pos, d_model] (already normalised) -> attention output [batch, pos, d_model]."""
        b, n, _ = hidden.shape
        # transformers' layout: per head, [q | k | v] of d_head each; head-major [b, head, pos, .].
        qkv = self.query_key_value(hidden).view(b, n, -1, 3 * self.d_head).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        q = _site(self.hook_q, self._rotate(q))
        k = _site(self.hook_k, self._rotate(k))
        v = _site(self.hook_v, v)
        if not self.explicit:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=self.scaling,
                                               is_causal=n > 1)
            z = z.reshape(b, -1, n, self.d_head).transpose(1, 2).contiguous()
            return self.dense(z.reshape(b, n, -1).contiguous())
        scores = (q @ k.transpose(-1, -2)) * self.scaling          # [b, head, q, k]
        causal = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        pattern = self.hook_pattern(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        z = self.hook_z((pattern @ v).transpose(1, 2))            # [b, pos, head, d_head]
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
    """Pre-norm block, parameters named as ``GPTNeoXLayer``; sums in transformers' order."""

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
        if not self.use_parallel_residual:
            mid = self.hook_resid_mid(attn + resid)
            return self.hook_resid_post(self.hook_mlp_out(self.mlp(self.post_attention_layernorm(mid))) + mid)
        mlp = self.hook_mlp_out(self.mlp(self.post_attention_layernorm(resid)))
        if not self.hook_resid_mid.active:
            return self.hook_resid_post(mlp + attn + resid)      # transformers' order of the sum
        return self.hook_resid_post(self.hook_resid_mid(resid + attn) + mlp)


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
        """Copy of a ``transformers.GPTNeoXForCausalLM`` (same dtype, device and train/eval mode)."""
        ours = cls(model.config)
        ours.load_hf_state_dict(dict(model.state_dict()))
        p = next(model.parameters())
        return ours.to(device=p.device, dtype=p.dtype).train(model.training)

    @classmethod
    def fresh(cls, config) -> "NeoXLM":
        """A freshly initialised model (seed torch first): transformers' initialisation, copied,
        so the weights are bitwise those of ``GPTNeoXForCausalLM(config)`` under the same seed."""
        from transformers import GPTNeoXForCausalLM

        return cls.from_hf(GPTNeoXForCausalLM(config))

    def to_hf(self):
        """An equal-weight ``transformers.GPTNeoXForCausalLM`` (e.g. to ``save_pretrained``)."""
        from transformers import GPTNeoXForCausalLM

        hf = GPTNeoXForCausalLM(hf_config(self.config))
        hf.load_state_dict(self.state_dict())
        p = next(self.parameters())
        return hf.to(device=p.device, dtype=p.dtype).train(self.training)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32) -> "NeoXLM":
        """Load a ``save_pretrained`` directory from safetensors only (no pickle, no remote code)."""
        from safetensors.torch import load_file

        path = Path(path)
        config = read_config(path, CONFIG_KEYS)
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

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> token embeddings [batch, pos, d_model] (block 0's input)."""
        return self.gpt_neox.embed_in(input_ids)

    def run_blocks(self, resid: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Blocks ``start``.. on resid [batch, pos, d_model] -> the last block's output, same shape."""
        for block in self.gpt_neox.layers[start:]:
            resid = block(resid)
        return resid

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and head: [..., d_model] -> logits [..., vocab] float32."""
        return self.lm_head(self.gpt_neox.final_layer_norm(resid)).float()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> logits [batch, pos, vocab] float32."""
        return self.unembed(self.run_blocks(self.embed(input_ids)))


class GPTNeoX(Architecture):
    """GPT-NeoX / Pythia: one forward (``NeoXLM``) for training, activations, CE loss and circuits."""

    name = "gpt_neox"
    required_fields = ("d_model", "n_layers", "n_heads", "train_tokens")
    circuits = "heads"
    neuron_hooks = ("blocks.{l}.mlp.hook_post",)

    def check_spec(self, spec: dict):
        if spec["d_model"] % spec["n_heads"]:
            return "n_heads", f"d_model {spec['d_model']} is not divisible by {spec['n_heads']} heads"
        return None

    def build_config(self, spec: dict, vocab_size: int, max_len: int, bos_id: int):
        from transformers import GPTNeoXConfig

        d = spec["d_model"]
        return GPTNeoXConfig(
            hidden_size=d,
            num_hidden_layers=spec["n_layers"],
            num_attention_heads=spec["n_heads"],
            intermediate_size=spec.get("d_mlp") or 4 * d,
            max_position_embeddings=max_len,
            # Pythia rotates 25% of each head; the toy's 32-dim heads would keep 8 rotary dims,
            # too weak a position signal for a previous-token head to form within the budget.
            rotary_pct=spec.get("rotary_pct", 1.0),
            use_parallel_residual=True,
            tie_word_embeddings=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=bos_id,
        )

    def build(self, config) -> NeoXLM:
        return NeoXLM.fresh(config).train()

    def load(self, path: Path) -> NeoXLM:
        return NeoXLM.from_pretrained(path)


ADAPTER = register(GPTNeoX())
