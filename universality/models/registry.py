"""The architecture registry, and the generic model functions that go through it.

One adapter per architecture (in the style of TransformerLens's architecture adapters), in its
own module: ``models/gpt_neox.py`` (``NeoXLM``), ``models/mamba.py`` (``MambaLM``),
``models/rwkv.py`` (``RwkvLM``). An adapter says
which ``models:`` keys a trained model needs, builds, loads and saves the model, names its hook
sites and splits its forward into ``embed`` / ``run_blocks`` / ``unembed`` (what path patching
runs from a later block). Nothing outside ``universality.models`` tests architecture names:
the workflow asks an adapter for its ``circuits`` capability instead.

Sites (per layer ``l``), all read and written through hook points (``universality.core.hooks``):
- ``resid``: the residual stream after block ``l`` [batch, pos, d_model].
- ``neuron``: the neuron basis of the baseline [batch, pos, D]; an architecture may name several
  hook points, concatenated along the last axis (Mamba: SiLU(conv(x)) and SiLU(z)).

A new architecture is one module with an :class:`Architecture` subclass and one
``register(...)`` call (see tests/models/test_registry.py).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from universality.core import hooks, integrity

__all__ = ["Architecture", "ARCHITECTURES", "register", "get", "arch_of", "build_config", "build_model",
           "check_model_folder", "load_model", "save_model", "logits_of", "n_layers", "capture", "site_width", "patch_resid",
           "hook_names", "SavedConfig", "read_config", "hf_config"]


class Architecture:
    """What the pipeline needs to know about one architecture (subclass and ``register``).

    Class attributes:
        name: the ``models.<name>.arch`` value and the transformers ``model_type``.
        required_fields: ``models:`` keys a trained (``source: train``) model must state.
        circuits: the circuit experiments it supports: "ssm" (state-space paths), "heads"
            (attention heads) or None.
        neuron_hooks: hook-point names of the ``neuron`` site of layer ``{l}``, concatenated.
    """

    name: str = ""
    required_fields: tuple[str, ...] = ("d_model", "n_layers", "train_tokens")
    circuits: str | None = None
    neuron_hooks: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        # Every architecture's ``load`` checks the folder first (check_model_folder), without
        # each adapter having to remember it.
        super().__init_subclass__(**kwargs)
        if "load" in cls.__dict__:
            cls.load = _checked_load(cls.__dict__["load"])

    def check_spec(self, spec: dict) -> tuple[str, str] | None:
        """An extra check of a trained model's spec: None, or (offending key, message)."""
        return None

    def build_config(self, spec: dict, vocab_size: int, max_len: int, bos_id: int):
        """A transformers config for a toy model described by a ``models:`` entry."""
        raise NotImplementedError

    def build(self, config) -> nn.Module:
        """A freshly initialised model in train mode (seed torch before calling)."""
        raise NotImplementedError

    def load(self, path: Path) -> nn.Module:
        """A ``save_pretrained`` folder (safetensors only) -> model in eval mode, float32."""
        raise NotImplementedError

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """``save_pretrained`` (safetensors) in the transformers layout, loadable by transformers."""
        model.to_hf().save_pretrained(str(out_dir), safe_serialization=True)

    def hook_name(self, site: str, layer: int) -> list[str]:
        """Hook points of a site at one layer (several: concatenated along the last axis)."""
        if site == "resid":
            return [f"blocks.{layer}.hook_resid_post"]
        if site == "neuron":
            return [h.format(l=layer) for h in self.neuron_hooks]
        raise ValueError(f"unknown site {site!r}; expected 'resid' or 'neuron'")

    def site_width(self, config, site: str) -> int:
        """Feature dimension D of a site."""
        if site == "resid":
            return config.hidden_size
        return config.intermediate_size

    # Forward pieces: the models implement them as methods; an adapter may override.
    def embed(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """ids [batch, pos] int64 -> block 0's input [batch, pos, d_model]."""
        return model.embed(ids)

    def run_blocks(self, model: nn.Module, resid: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Blocks ``start``.. on resid [batch, pos, d_model] -> the last block's output, same shape."""
        return model.run_blocks(resid, start)

    def unembed(self, model: nn.Module, resid: torch.Tensor) -> torch.Tensor:
        """Final norm and head: [..., d_model] -> logits [..., vocab] float32."""
        return model.unembed(resid)


class SavedConfig:
    """A ``config.json`` written by transformers 5 for a model built here, as attributes.

    Reading it needs no transformers import: the config classes pull in
    ``transformers.configuration_utils`` (and through it ``torch.distributed.tensor``), ~0.6-0.9
    CPU s in every job that loads a model, for a JSON file whose keys are already complete.
    ``to_hf()`` gives the transformers config of its ``model_type`` (for ``to_hf`` /
    ``save_pretrained``).
    """

    def __init__(self, values: dict):
        self.__dict__.update(values)

    def to_dict(self) -> dict:
        return dict(vars(self))

    def to_hf(self):
        from transformers import CONFIG_MAPPING

        return CONFIG_MAPPING[self.model_type].from_dict(self.to_dict())


def read_config(path: Path, keys: tuple[str, ...]):
    """The config of a ``save_pretrained`` folder: a :class:`SavedConfig` when transformers >= 5
    wrote it and it states every key in ``keys`` (what our forward reads); otherwise (a legacy hub
    config: ``rotary_pct``, ``time_step_rank: "auto"``, ...) transformers' class for its
    ``model_type``, which derives the missing keys."""
    values = json.loads((Path(path) / "config.json").read_text())
    major = str(values.get("transformers_version", "0")).split(".")[0]
    if major.isdigit() and int(major) >= 5 and all(k in values for k in keys):
        return SavedConfig(values)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def hf_config(config):
    """A transformers config (a copy) from a :class:`SavedConfig` or a transformers config."""
    return config.to_hf() if isinstance(config, SavedConfig) else copy.deepcopy(config)


def check_model_folder(path: Path, *, external: bool = False) -> None:
    """Before a model folder is loaded: its integrity record (every file's size and sha256, the
    weights' blocks sampled above FULL_VERIFY_BYTES; ``external``: a folder the pipeline did not
    write may have none), then each safetensors header, so that a truncated or garbage weights
    file raises StoreError naming it (not safetensors' bare "header too large")."""
    from safetensors import safe_open

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (config.json missing)")
    integrity.verify(path, external=external)
    for f in sorted(path.glob("*.safetensors")):
        with integrity.reading(f), safe_open(str(f), "pt") as g:
            g.keys()


def _checked_load(load):
    @functools.wraps(load)
    def checked(self, path, *, external: bool = False):
        check_model_folder(Path(path), external=external)
        with integrity.reading(path):
            return load(self, Path(path))
    return checked


#: ``{name: adapter}`` of every registered architecture (the built-in three are registered when
#: this module is imported).
ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add (or replace) an architecture under ``arch.name``; returns it."""
    if not arch.name:
        raise ValueError(f"{type(arch).__name__} has no name")
    ARCHITECTURES[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    """The adapter of ``name``; KeyError naming the known architectures otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def arch_of(model: nn.Module) -> Architecture:
    """The adapter of a model (by its config's ``model_type``)."""
    return get(model.config.model_type)


# --------------------------------------------------------------------------- generic functions
def build_config(spec: dict, vocab_size: int, max_len: int, bos_id: int):
    """A transformers config for a toy model described by a ``models:`` entry."""
    return get(spec["arch"]).build_config(spec, vocab_size, max_len, bos_id)


def build_model(config) -> nn.Module:
    """A freshly initialised model (seed torch before calling)."""
    return get(config.model_type).build(config)


def save_model(model: nn.Module, out_dir: str | Path) -> None:
    """``save_pretrained`` (safetensors) in the transformers layout of the architecture, sealed
    (an integrity record; a writer that adds files afterwards seals again)."""
    arch_of(model).save(model, Path(out_dir))
    integrity.seal(out_dir)


def load_model(path: str | Path, *, external: bool = False) -> nn.Module:
    """Load a ``save_pretrained`` directory for collection or patching (eval mode, float32),
    checked first (:func:`check_model_folder`; ``external``: a folder the pipeline did not
    write, e.g. a plain transformers ``save_pretrained``, may have no integrity record)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (config.json missing)")
    with integrity.reading(path / "config.json"):
        kind = json.loads((path / "config.json").read_text()).get("model_type")
    if kind not in ARCHITECTURES:
        raise ValueError(f"{path}: unsupported model_type {kind!r}; expected one of {sorted(ARCHITECTURES)}")
    return get(kind).load(path, external=external).eval()


def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """[batch, pos] int64 -> [batch, pos, vocab] float32 logits, whatever the architecture."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def n_layers(model: nn.Module) -> int:
    return model.config.num_hidden_layers


def hook_names(model: nn.Module, site: str, layer: int) -> list[str]:
    """Hook points of a site of ``model`` at ``layer``."""
    return arch_of(model).hook_name(site, layer)


def site_width(model: nn.Module, site: str) -> int:
    """Feature dimension D of a site."""
    return arch_of(model).site_width(model.config, site)


@contextlib.contextmanager
def capture(model: nn.Module, sites: list[tuple[str, int]]) -> Iterator[dict]:
    """Within the block, every forward fills ``cache[(site, layer)]`` with [batch, pos, D] tensors
    (detached; a site of several hook points is their concatenation, in the adapter's order)."""
    cache: dict[tuple[str, int], torch.Tensor] = {}
    where = {}                                   # hook name -> (site, layer, part)
    for site, layer in sites:
        for part, name in enumerate(hook_names(model, site, layer)):
            where[name] = (site, layer, part)
    parts: dict = {}

    def keep(tensor, name):
        site, layer, part = where[name]
        got = parts.setdefault((site, layer), {})
        got[part] = tensor.detach()
        cache[(site, layer)] = got[0] if len(got) == 1 else torch.cat([got[k] for k in sorted(got)], -1)

    with hooks.hooks(model, {n: keep for n in where}):
        yield cache


@contextlib.contextmanager
def patch_resid(model: nn.Module, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Within the block, the residual stream after block ``layer`` is replaced by ``fn(resid)``.

    ``fn`` maps [batch, pos, d_model] to the same shape; everything downstream reads the result.
    """
    (name,) = hook_names(model, "resid", layer)
    with hooks.hooks(model, {name: lambda t, _name: fn(t)}):
        yield


def _register_builtins() -> None:
    # Each architecture module registers its adapter when imported (they import this module for
    # Architecture, so they are imported last, here).
    from universality.models import gpt_neox, mamba, rwkv  # noqa: F401


_register_builtins()
