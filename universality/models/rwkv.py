"""RWKV-4: transformers' ``RwkvForCausalLM`` forward, with hook sites added by module composition.

``HookedRwkv`` holds the transformers model and replaces, in each block, two modules by
wrappers (no library function is patched):

- ``rwkv.blocks[l]`` by :class:`BlockSite`, which calls the original block and passes its hidden
  state through ``blocks.{l}.hook_resid_post`` [batch, pos, d_model];
- ``rwkv.blocks[l].feed_forward`` by :class:`ChannelMix`, transformers' channel mix with the
  same parameters (and op sequence) whose ReLU(k)^2 passes through
  ``blocks.{l}.ffn.hook_post`` [batch, pos, d_ffn].

The forward is transformers' (its logits are bitwise those of the wrapped model); ``to_hf``
gives back an unwrapped ``RwkvForCausalLM`` with the same weights for ``save_pretrained``.
``rescale_every`` is 0 everywhere: in eval mode transformers halves the hidden states every
``rescale_every`` blocks (hub RWKV-4: 6, an fp16 overflow guard), so block outputs would differ
from the training-mode residual stream by 2^k; in float32 the guard is not needed.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from universality.core.hooks import HookPoint
from universality.models.registry import Architecture, register

__all__ = ["HookedRwkv", "BlockSite", "ChannelMix", "Rwkv", "ADAPTER"]


class ChannelMix(nn.Module):
    """``RwkvFeedForward`` with a hook site on ReLU(k)^2; takes over the original's parameters
    (same names, so the state dict is unchanged)."""

    def __init__(self, ffn: nn.Module, layer: int):
        super().__init__()
        self.layer_id = ffn.layer_id
        self.time_shift = ffn.time_shift
        self.time_mix_key, self.time_mix_receptance = ffn.time_mix_key, ffn.time_mix_receptance
        self.key, self.receptance, self.value = ffn.key, ffn.receptance, ffn.value
        self.hook_post = HookPoint(f"blocks.{layer}.ffn.hook_post")

    def forward(self, hidden: torch.Tensor, state=None):
        # transformers' RwkvFeedForward.forward, op for op (the state is the generation cache).
        if hidden.size(1) == 1 and state is not None:
            shifted = state[0][:, :, self.layer_id]
        else:
            shifted = self.time_shift(hidden)
            if state is not None:
                shifted[:, 0] = state[0][:, :, self.layer_id]
        key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
        receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
        key = self.hook_post(torch.square(torch.relu(self.key(key))))
        value = self.value(key)
        receptance = torch.sigmoid(self.receptance(receptance))
        if state is not None:
            state[0][:, :, self.layer_id] = hidden[:, -1]
        return receptance * value, state


class BlockSite(nn.Module):
    """A transformers ``RwkvBlock`` whose hidden-state output passes through a hook site."""

    def __init__(self, block: nn.Module, layer: int):
        super().__init__()
        self.inner = block
        self.hook_resid_post = HookPoint(f"blocks.{layer}.hook_resid_post")

    # transformers' eval-mode rescaling (rescale_every > 0) reaches into the blocks' modules.
    @property
    def attention(self) -> nn.Module:
        return self.inner.attention

    @property
    def feed_forward(self) -> nn.Module:
        return self.inner.feed_forward

    def forward(self, hidden, *args, **kwargs):
        out = self.inner(hidden, *args, **kwargs)
        return (self.hook_resid_post(out[0]),) + tuple(out[1:])


class HookedRwkv(nn.Module):
    """``RwkvForCausalLM`` with ``hook_points`` (see the module docstring); wraps ``hf`` in place."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.config = hf.config
        self.rwkv, self.head = hf.rwkv, hf.head
        self._hf = [hf]                                 # a list: not a submodule, no double params
        self.hook_points: dict[str, HookPoint] = {}
        for l, block in enumerate(hf.rwkv.blocks):
            block.feed_forward = ChannelMix(block.feed_forward, l)
            hf.rwkv.blocks[l] = BlockSite(block, l)
            self.hook_points[f"blocks.{l}.ffn.hook_post"] = block.feed_forward.hook_post
            self.hook_points[f"blocks.{l}.hook_resid_post"] = hf.rwkv.blocks[l].hook_resid_post

    def train(self, mode: bool = True):
        self._hf[0].train(mode)                         # transformers reads its own .training
        return super().train(mode)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, pos] int64 -> logits [batch, pos, vocab] float32."""
        return self._hf[0](input_ids).logits

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.rwkv.embeddings(input_ids)

    def run_blocks(self, resid: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Blocks ``start``.. without the generation state (rescale_every = 0: nothing else)."""
        for block in self.rwkv.blocks[start:]:
            resid = block(resid)[0]
        return resid

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.head(self.rwkv.ln_out(resid)).float()

    def to_hf(self):
        """An unwrapped, equal-weight ``RwkvForCausalLM`` (e.g. to ``save_pretrained``)."""
        from transformers import RwkvForCausalLM

        hf = RwkvForCausalLM(copy.deepcopy(self.config))
        state = {k.replace(".inner.", "."): v for k, v in self.state_dict().items()}
        hf.load_state_dict(state)
        p = next(self.parameters())
        return hf.to(device=p.device, dtype=p.dtype).train(self.training)


class Rwkv(Architecture):
    """RWKV-4 (transformers' forward; no circuit experiments: no instrumented WKV yet)."""

    name = "rwkv"
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

    def build(self, config) -> HookedRwkv:
        from transformers import RwkvForCausalLM

        return HookedRwkv(RwkvForCausalLM(config)).train()

    def load(self, path: Path) -> HookedRwkv:
        from transformers import RwkvConfig, RwkvForCausalLM

        if not (path / "model.safetensors").exists() and not (path / "model.safetensors.index.json").exists():
            raise FileNotFoundError(f"no model.safetensors in {path} (pickle checkpoints are not read)")
        config = RwkvConfig.from_pretrained(str(path), local_files_only=True)
        config.rescale_every = 0
        hf = RwkvForCausalLM.from_pretrained(str(path), config=config, local_files_only=True,
                                             dtype=torch.float32, use_safetensors=True)
        return HookedRwkv(hf).eval()

    def site_width(self, config, site: str) -> int:
        return config.hidden_size if site == "resid" else (config.intermediate_size or 4 * config.hidden_size)


ADAPTER = register(Rwkv())
