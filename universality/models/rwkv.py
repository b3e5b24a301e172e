"""Instrumented RWKV-4 language model in plain torch, weight-compatible with transformers.

``RwkvLM`` has exactly the parameter names and shapes of ``transformers.RwkvForCausalLM``
(``rwkv.embeddings.weight``, ``rwkv.blocks.0.pre_ln``, ``rwkv.blocks.{l}.{ln1, ln2}``,
``rwkv.blocks.{l}.attention.{time_decay, time_first, time_mix_key, time_mix_value,
time_mix_receptance, key, value, receptance, output}``, ``rwkv.blocks.{l}.feed_forward.
{time_mix_key, time_mix_receptance, key, receptance, value}``, ``rwkv.ln_out``, ``head``), so
state dicts move both ways: ``from_pretrained`` reads a ``save_pretrained`` folder (ours, or a
hub checkpoint such as ``RWKV/rwkv-4-169m-pile``) from safetensors, and ``save_pretrained`` /
``to_hf`` write what ``RwkvForCausalLM.from_pretrained`` loads. It reproduces transformers'
forward (no generation state) to float32 rounding (tests: 1e-5), with the WKV recurrence of
:mod:`universality.models.wkv` (a C kernel with a hand-written backward), and exposes hook sites
(``universality.core.hooks``), all [batch, pos, width] float32:

    blocks.{l}.hook_resid_pre     block input (block 0: after pre_ln)             d_model
    blocks.{l}.att.hook_receptance  sigmoid(R x_r)                                  attention_hidden_size
    blocks.{l}.att.hook_key       K x_k (the WKV key)                              attention_hidden_size
    blocks.{l}.att.hook_value     V x_v                                            attention_hidden_size
    blocks.{l}.att.hook_wkv_num   WKV state after each position: numerator,        attention_hidden_size
    blocks.{l}.att.hook_wkv_den     denominator and running max, in transformers'
    blocks.{l}.att.hook_wkv_max     max-normalised form (real = num * e^max, see wkv.py)
    blocks.{l}.att.hook_wkv       wkv_t (before the receptance gate)               attention_hidden_size
    blocks.{l}.hook_resid_mid     resid_pre + time mix                             d_model
    blocks.{l}.ffn.hook_post      ReLU(K x_k)^2, the channel-mix neurons            d_ffn (intermediate_size)
    blocks.{l}.hook_resid_post    block output                                     d_model

A hook returning a replacement for ``hook_key`` / ``hook_value`` changes the WKV input, so the
states and everything after follow.

The WKV state sites are special, as Mamba's ``hook_state``: the states are materialised only
when a hook is registered on one of them. Each hook receives a copy of the clean states of the
whole sequence. If what the three hooks return differs from them at some (b, t, c), that
element's (num, den, max) is an override: the recurrence is re-run from the first changed
position (``wkv.propagate_wkv_patch``), so later states of the layer follow the patched one and
wkv_{t'} for t' > t is recomputed; positions up to t are untouched. "Replace layer l's WKV state
at positions P with the one of another run" is therefore a hook function:
:func:`wkv_state_patch` builds the three hooks from a cache of the other run's states (record
them with ``run_with_cache(model, ids, [*state_hook_names(l)])``); freezing a layer's states at
the clean run's values is the same call with the clean run's cache. Cost: a patch re-runs the
layer's recurrence with a Python loop over positions (analysis only; autograd works through it).

``rescale_every`` is 0 everywhere: in eval mode transformers halves the hidden states every
``rescale_every`` blocks (hub RWKV-4: 6, an fp16 overflow guard), so its block outputs would
differ from the training-mode residual stream by 2^k; in float32 the guard is not needed. Our
forward never rescales, and the config we keep, save and hand to transformers says 0, so that
transformers computes our numbers in both modes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from universality.core.hooks import HookPoint
from universality.models.registry import Architecture, hf_config, read_config, register
from universality.models.wkv import propagate_wkv_patch, wkv

#: config.json keys our forward reads: a config.json stating all of them is read without
#: transformers (registry.read_config).
CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "attention_hidden_size", "intermediate_size",
               "layer_norm_epsilon", "rescale_every", "tie_word_embeddings", "vocab_size")

__all__ = ["RwkvLM", "TimeMix", "ChannelMix", "RwkvBlock", "Rwkv", "ADAPTER", "ATT_HOOKS",
           "STATE_HOOKS", "BLOCK_HOOKS", "state_hook_names", "wkv_state_patch"]

STATE_HOOKS = ("hook_wkv_num", "hook_wkv_den", "hook_wkv_max")
ATT_HOOKS = ("hook_receptance", "hook_key", "hook_value", *STATE_HOOKS, "hook_wkv")
BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


def _mix(hidden, shifted, mix):
    """Token shift interpolation, in transformers' op order."""
    return hidden * mix + shifted * (1 - mix)


class TimeMix(nn.Module):
    """RWKV-4 time mix; parameters named as ``RwkvSelfAttention``. [batch, pos, d] -> same."""

    def __init__(self, config, layer: int):
        super().__init__()
        d, att = config.hidden_size, config.attention_hidden_size or config.hidden_size
        self.time_decay = nn.Parameter(torch.empty(att))
        self.time_first = nn.Parameter(torch.empty(att))
        self.time_mix_key = nn.Parameter(torch.empty(1, 1, d))
        self.time_mix_value = nn.Parameter(torch.empty(1, 1, d))
        self.time_mix_receptance = nn.Parameter(torch.empty(1, 1, d))
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.key = nn.Linear(d, att, bias=False)
        self.value = nn.Linear(d, att, bias=False)
        self.receptance = nn.Linear(d, att, bias=False)
        self.output = nn.Linear(att, d, bias=False)
        for name in ATT_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer}.att.{name}"))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shifted = self.time_shift(hidden)
        k = self.hook_key(self.key(_mix(hidden, shifted, self.time_mix_key)))
        v = self.hook_value(self.value(_mix(hidden, shifted, self.time_mix_value)))
        r = self.hook_receptance(torch.sigmoid(self.receptance(_mix(hidden, shifted, self.time_mix_receptance))))
        points = [getattr(self, n) for n in STATE_HOOKS]
        if any(p.active for p in points):
            y, clean = wkv(self.time_decay, self.time_first, k, v, return_states=True)
            # The hooks see copies, so in-place edits show up as differences from `clean`.
            seen = tuple(p(s.clone()).to(s.dtype) for p, s in zip(points, clean))
            y, _ = propagate_wkv_patch(self.time_decay, self.time_first, k, v, y, clean, seen)
        else:
            y = wkv(self.time_decay, self.time_first, k, v)
        return self.output(r * self.hook_wkv(y.to(r.dtype)))


class ChannelMix(nn.Module):
    """RWKV-4 channel mix; parameters named as ``RwkvFeedForward``; ReLU(k)^2 at ``hook_post``."""

    def __init__(self, config, layer: int):
        super().__init__()
        d, ffn = config.hidden_size, config.intermediate_size or 4 * config.hidden_size
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.time_mix_key = nn.Parameter(torch.empty(1, 1, d))
        self.time_mix_receptance = nn.Parameter(torch.empty(1, 1, d))
        self.key = nn.Linear(d, ffn, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(ffn, d, bias=False)
        self.hook_post = HookPoint(f"blocks.{layer}.ffn.hook_post")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shifted = self.time_shift(hidden)
        key = self.hook_post(torch.square(torch.relu(self.key(_mix(hidden, shifted, self.time_mix_key)))))
        receptance = torch.sigmoid(self.receptance(_mix(hidden, shifted, self.time_mix_receptance)))
        return receptance * self.value(key)


class RwkvBlock(nn.Module):
    """resid_mid = resid + TimeMix(ln1(resid)); resid_post = resid_mid + ChannelMix(ln2(resid_mid))."""

    def __init__(self, config, layer: int):
        super().__init__()
        if layer == 0:
            self.pre_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attention = TimeMix(config, layer)
        self.feed_forward = ChannelMix(config, layer)
        for name in BLOCK_HOOKS:
            setattr(self, name, HookPoint(f"blocks.{layer}.{name}"))

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "pre_ln"):
            resid = self.pre_ln(resid)
        resid = self.hook_resid_pre(resid)
        mid = self.hook_resid_mid(resid + self.attention(self.ln1(resid)))
        return self.hook_resid_post(mid + self.feed_forward(self.ln2(mid)))


class _Backbone(nn.Module):
    """Container so that parameter names match ``RwkvForCausalLM.rwkv``."""

    def __init__(self, config):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(RwkvBlock(config, l) for l in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size)


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    raise FileNotFoundError(f"no model.safetensors in {path} (pickle checkpoints are not read)")


class RwkvLM(nn.Module):
    """RWKV-4 causal LM with hook sites; same state dict as ``transformers.RwkvForCausalLM``."""

    def __init__(self, config):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.config.rescale_every = 0                      # see the module docstring
        self.rwkv = _Backbone(self.config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.head.weight = self.rwkv.embeddings.weight
        #: ``{name: HookPoint}`` for ``universality.core.hooks``, in forward order.
        self.hook_points: dict[str, HookPoint] = {}
        for block in self.rwkv.blocks:
            order = [block.hook_resid_pre, *(getattr(block.attention, h) for h in ATT_HOOKS),
                     block.hook_resid_mid, block.feed_forward.hook_post, block.hook_resid_post]
            self.hook_points.update({p.name: p for p in order})

    @property
    def n_layers(self) -> int:
        return len(self.rwkv.blocks)

    def load_hf_state_dict(self, state_dict: dict) -> None:
        """Load a ``RwkvForCausalLM`` state dict (``head.weight`` may be absent when tied)."""
        state_dict = dict(state_dict)
        if self.head.weight is self.rwkv.embeddings.weight and "head.weight" not in state_dict:
            state_dict["head.weight"] = state_dict["rwkv.embeddings.weight"]
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")

    @classmethod
    def from_hf(cls, model) -> "RwkvLM":
        """Copy of a ``transformers.RwkvForCausalLM`` (same dtype, device and train/eval mode)."""
        ours = cls(model.config)
        ours.load_hf_state_dict(model.state_dict())
        p = next(model.parameters())
        return ours.to(device=p.device, dtype=p.dtype).train(model.training)

    @classmethod
    def fresh(cls, config) -> "RwkvLM":
        """A freshly initialised model (seed torch first): transformers' initialisation, copied,
        so the weights are bitwise those of ``RwkvForCausalLM(config)`` under the same seed."""
        from transformers import RwkvForCausalLM

        return cls.from_hf(RwkvForCausalLM(config))

    def to_hf(self):
        """An equal-weight ``transformers.RwkvForCausalLM`` (e.g. to ``save_pretrained``)."""
        from transformers import RwkvForCausalLM

        hf = RwkvForCausalLM(hf_config(self.config))
        hf.load_state_dict(self.state_dict())
        p = next(self.parameters())
        return hf.to(device=p.device, dtype=p.dtype).train(self.training)

    def save_pretrained(self, path) -> None:
        """Write a transformers ``save_pretrained`` directory (config.json + model.safetensors)."""
        self.to_hf().save_pretrained(str(path), safe_serialization=True)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32) -> "RwkvLM":
        """Load a ``save_pretrained`` directory from safetensors only (no pickle, no remote code)."""
        from safetensors.torch import load_file

        path = Path(path)
        config = read_config(path, CONFIG_KEYS)
        state = {}
        for f in _safetensors_files(path):
            state.update({k: v.to(dtype) for k, v in load_file(str(f)).items()})
        model = cls(config).to(dtype)
        model.load_hf_state_dict(state)
        return model.eval()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> token embeddings [batch, pos, d_model] (block 0 applies pre_ln)."""
        return self.rwkv.embeddings(input_ids)

    def run_blocks(self, resid: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Blocks ``start``.. on resid [batch, pos, d_model] -> the last block's output, same shape."""
        for block in self.rwkv.blocks[start:]:
            resid = block(resid)
        return resid

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """ln_out and head: [..., d_model] -> logits [..., vocab] float32."""
        return self.head(self.rwkv.ln_out(resid)).float()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> logits [batch, pos, vocab] float32."""
        return self.unembed(self.run_blocks(self.embed(input_ids)))


def state_hook_names(layer: int) -> list[str]:
    """The three WKV state sites of ``layer`` (num, den, max)."""
    return [f"blocks.{layer}.att.{h}" for h in STATE_HOOKS]


def wkv_state_patch(layer: int, source: dict, positions, rows=None) -> dict:
    """Hooks ``{name: fn}`` that replace layer ``layer``'s WKV state at ``positions`` by ``source``'s.

    ``source`` maps the three names of :func:`state_hook_names` to [batch, pos, C] states of
    another run (e.g. the cache of ``run_with_cache``); ``positions`` is an int, a list or a
    [batch, ...] index along pos; ``rows`` optionally restricts the batch rows. The three states
    are replaced together (the max-normalised triple is meaningful only as a whole). Use with
    ``hooks(model, wkv_state_patch(...))``; the model propagates the patch (module docstring).
    """
    rows = slice(None) if rows is None else rows

    def replace(t: torch.Tensor, name: str) -> torch.Tensor:
        out = t.clone()
        out[rows, positions] = source[name].to(t)[rows, positions]
        return out

    return {name: replace for name in state_hook_names(layer)}


class Rwkv(Architecture):
    """RWKV-4: one forward (``RwkvLM``) for training, activations and CE loss; circuits "wkv"
    (WKV-state path patching, :mod:`universality.circuits.wkv_paths`)."""

    name = "rwkv"
    circuits = "wkv"
    neuron_hooks = ("blocks.{l}.ffn.hook_post",)

    def build_config(self, spec: dict, vocab_size: int, max_len: int, bos_id: int):
        from transformers import RwkvConfig

        d = spec["d_model"]
        # rescale_every=0: see the module docstring (training and collection read one stream).
        return RwkvConfig(
            hidden_size=d,
            num_hidden_layers=spec["n_layers"],
            attention_hidden_size=d,
            intermediate_size=spec.get("d_mlp") or 4 * d,
            context_length=max_len,
            rescale_every=0,
            tie_word_embeddings=False,
            vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=bos_id,
        )

    def build(self, config) -> RwkvLM:
        return RwkvLM.fresh(config).train()

    def load(self, path: Path) -> RwkvLM:
        return RwkvLM.from_pretrained(path)

    def site_width(self, config, site: str) -> int:
        return config.hidden_size if site == "resid" else (config.intermediate_size or 4 * config.hidden_size)


ADAPTER = register(Rwkv())
