"""Model construction, loading and the activation sites of every architecture.

One forward per architecture: GPT-NeoX and RWKV run their transformers modules (read through
torch forward hooks on named submodules); Mamba runs the package's own instrumented
:class:`universality.models.mamba.MambaLM`, which is numerically equal to transformers' forward.

Sites (per layer ``l``):
- ``resid``: the residual stream after block ``l`` [batch, pos, d_model].
- ``neuron``: the neuron basis of the baseline. GPT-NeoX: MLP post-activation [batch, pos, d_mlp];
  Mamba: SiLU(conv(x)) and SiLU(z) side by side [batch, pos, 2 * d_inner], as the paper's script;
  RWKV: the channel-mix ReLU(k)^2 [batch, pos, d_ffn].
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

ARCHITECTURES = ("gpt_neox", "mamba", "rwkv")


def build_config(spec: dict, vocab_size: int, max_len: int, bos_id: int):
    """A transformers config for a toy model described by a ``models:`` entry."""
    from transformers import GPTNeoXConfig, MambaConfig, RwkvConfig

    arch, d = spec["arch"], spec["d_model"]
    common = dict(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=bos_id)
    if arch == "gpt_neox":
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
            **common,
        )
    if arch == "mamba":
        return MambaConfig(
            hidden_size=d,
            num_hidden_layers=spec["n_layers"],
            state_size=spec.get("d_state") or 16,
            expand=spec.get("expand") or 2,
            conv_kernel=spec.get("d_conv") or 4,
            use_cache=False,
            **common,
        )
    if arch == "rwkv":
        # rescale_every=0: transformers rescales hidden states every k layers in eval mode only,
        # which would make training and collection read different residual streams.
        return RwkvConfig(
            hidden_size=d,
            num_hidden_layers=spec["n_layers"],
            attention_hidden_size=d,
            intermediate_size=spec.get("d_mlp") or 4 * d,
            context_length=max_len,
            rescale_every=0,
            tie_word_embeddings=False,
            **common,
        )
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def build_model(config) -> nn.Module:
    """A freshly initialised model (seed torch before calling)."""
    from transformers import GPTNeoXForCausalLM, RwkvForCausalLM

    if config.model_type == "gpt_neox":
        return GPTNeoXForCausalLM(config)
    if config.model_type == "mamba":
        from universality.models.mamba import MambaLM

        return MambaLM(config)
    if config.model_type == "rwkv":
        return RwkvForCausalLM(config)
    raise ValueError(f"unknown model_type {config.model_type!r}")


def save_model(model: nn.Module, out_dir: str | Path) -> None:
    """``save_pretrained`` (safetensors) in the transformers layout of the architecture."""
    hf = model.to_hf() if hasattr(model, "to_hf") else model
    hf.save_pretrained(str(out_dir), safe_serialization=True)


def load_model(path: str | Path) -> nn.Module:
    """Load a ``save_pretrained`` directory for collection or patching (eval mode, float32)."""
    from transformers import AutoConfig, GPTNeoXForCausalLM, RwkvForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (config.json missing)")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type == "mamba":
        from universality.models.mamba import MambaLM

        model = MambaLM.from_pretrained(str(path))
    elif config.model_type == "gpt_neox":
        model = GPTNeoXForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    elif config.model_type == "rwkv":
        # rescale_every=0: in eval mode transformers halves the hidden states every
        # `rescale_every` blocks (hub RWKV-4: 6, an fp16 overflow guard), so block outputs would
        # differ from the training-mode residual stream by 2^k. In float32 the guard is not
        # needed; collection, SAE evaluation and patching all read the unscaled stream.
        model = RwkvForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                                rescale_every=0)
    else:
        raise ValueError(f"{path}: unsupported model_type {config.model_type!r}; expected {ARCHITECTURES}")
    return model.eval()


def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """[batch, pos] int64 -> [batch, pos, vocab] float32 logits, whatever the architecture."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def n_layers(model: nn.Module) -> int:
    return model.config.num_hidden_layers


def _site_modules(model: nn.Module, site: str, layer: int) -> nn.Module:
    """The submodule whose forward output is the (non-Mamba) site's activation."""
    mt = model.config.model_type
    if mt == "gpt_neox":
        block = model.gpt_neox.layers[layer]
        return block if site == "resid" else block.mlp.act
    if mt == "rwkv":
        block = model.rwkv.blocks[layer]
        return block if site == "resid" else block.feed_forward.key
    raise ValueError(mt)


@contextlib.contextmanager
def capture(model: nn.Module, sites: list[tuple[str, int]]) -> Iterator[dict]:
    """Within the block, every forward fills ``cache[(site, layer)]`` with [batch, pos, D] tensors."""
    cache: dict[tuple[str, int], torch.Tensor] = {}
    if model.config.model_type == "mamba":
        from universality.core import hooks

        names = {}
        for site, layer in sites:
            if site == "resid":
                names[f"blocks.{layer}.hook_resid_post"] = (site, layer, 0)
            else:
                names[f"blocks.{layer}.mixer.hook_ssm_in"] = (site, layer, 0)
                names[f"blocks.{layer}.mixer.hook_gate"] = (site, layer, 1)
        parts: dict = {}

        def keep(tensor, name):
            site, layer, part = names[name]
            parts.setdefault((site, layer), {})[part] = tensor.detach()
            cache[(site, layer)] = torch.cat([parts[(site, layer)][k] for k in sorted(parts[(site, layer)])], -1)

        with hooks.hooks(model, {n: keep for n in names}):
            yield cache
        return

    handles = []
    for site, layer in sites:
        module = _site_modules(model, site, layer)
        post: Callable = (lambda t: torch.relu(t) ** 2) if (model.config.model_type == "rwkv" and site == "neuron") else (lambda t: t)

        def hook(_mod, _inp, out, key=(site, layer), post=post):
            t = out[0] if isinstance(out, tuple) else out
            cache[key] = post(t.detach())

        handles.append(module.register_forward_hook(hook))
    try:
        yield cache
    finally:
        for h in handles:
            h.remove()


def site_width(model: nn.Module, site: str) -> int:
    """Feature dimension D of a site."""
    c = model.config
    if site == "resid":
        return c.hidden_size
    if c.model_type == "gpt_neox":
        return c.intermediate_size
    if c.model_type == "mamba":
        return 2 * c.intermediate_size
    if c.model_type == "rwkv":
        return c.intermediate_size or 4 * c.hidden_size
    raise ValueError(c.model_type)


@contextlib.contextmanager
def patch_resid(model: nn.Module, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Within the block, the residual stream after block ``layer`` is replaced by ``fn(resid)``.

    ``fn`` maps [batch, pos, d_model] to the same shape; everything downstream reads the result.
    """
    if model.config.model_type == "mamba":
        from universality.core import hooks

        with hooks.hooks(model, {f"blocks.{layer}.hook_resid_post": lambda t, _name: fn(t)}):
            yield
        return

    def hook(_mod, _inp, out):
        if isinstance(out, tuple):
            return (fn(out[0]),) + tuple(out[1:])
        return fn(out)

    handle = _site_modules(model, "resid", layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
