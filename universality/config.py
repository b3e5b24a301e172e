"""Configuration: schema validation with defaults, then semantic checks with readable errors.

The Snakefile calls :func:`load_config` once; every error names the offending key
(``models.mamba-s0.arch``), file or value, so a researcher can fix the YAML without reading code.
"""
from __future__ import annotations

import copy
import glob
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

#: Fields a trained (source: train) model of each architecture must state.
REQUIRED_FIELDS = {
    "gpt_neox": ("d_model", "n_layers", "n_heads", "train_tokens"),
    "mamba": ("d_model", "n_layers", "train_tokens"),
    "rwkv": ("d_model", "n_layers", "train_tokens"),
}
#: Fields a hub model must state so that the DAG can be planned without weights.
REQUIRED_HUB_FIELDS = ("hub_id", "d_model", "n_layers")


class ConfigError(ValueError):
    """A configuration problem; the message names the key, file or value at fault."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(node: Any, schema: dict) -> Any:
    """Recursively insert ``default`` values of object properties (jsonschema does not)."""
    if not isinstance(node, dict) or schema.get("type") not in ("object", None):
        return node
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node:
            node[key] = _fill_defaults(node[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in node:
            if key not in schema.get("properties", {}):
                node[key] = _fill_defaults(node[key], extra)
    return node


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(config: dict, schema: dict | None = None) -> dict:
    """Return a validated copy of ``config`` with defaults filled in; raise ConfigError."""
    schema = schema or load_schema()
    config = _fill_defaults(copy.deepcopy(dict(config)), schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_key_path(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    _check_models(config)
    _check_corpus(config)
    _check_saes(config)
    _check_comparisons(config)
    return config


def _check_models(config: dict) -> None:
    for name, m in config["models"].items():
        required = REQUIRED_HUB_FIELDS if m["source"] == "hub" else REQUIRED_FIELDS[m["arch"]]
        missing = [f for f in required if m.get(f) is None]
        if missing:
            raise ConfigError(
                f"models.{name}: a {m['source']} {m['arch']} model needs "
                + ", ".join(f"models.{name}.{f}" for f in missing)
            )
        if m["arch"] == "gpt_neox" and m["source"] == "train" and m["d_model"] % m["n_heads"]:
            raise ConfigError(
                f"models.{name}.n_heads: d_model {m['d_model']} is not divisible by {m['n_heads']} heads"
            )
        for layer in m.get("layers") or []:
            if not 0 <= layer < m["n_layers"]:
                raise ConfigError(
                    f"models.{name}.layers: layer {layer} out of range [0, {m['n_layers']})"
                )


def _check_saes(config: dict) -> None:
    s = config["saes"]
    for site in s["sites"]:
        if site not in config["activations"]["sites"]:
            raise ConfigError(f"saes.sites: {site!r} is not collected (add it to activations.sites)")
    for section in ("extra_seeds", "overrides"):
        for model in s[section]:
            if model not in config["models"]:
                raise ConfigError(f"saes.{section}.{model}: no such model in `models`")
    for model, layers in s["overrides"].items():
        for layer, changes in layers.items():
            if int(layer) not in model_layers(config, model):
                raise ConfigError(f"saes.overrides.{model}.{layer}: layer out of range / not collected")
            unknown = set(changes) - set(SAE_OVERRIDABLE)
            if unknown:
                raise ConfigError(f"saes.overrides.{model}.{layer}: unknown keys {sorted(unknown)}")


def _check_comparisons(config: dict) -> None:
    for name, c in config["comparisons"].items():
        key = f"comparisons.{name}"
        for side in ("a", "b"):
            if c[side] not in config["models"]:
                raise ConfigError(f"{key}.{side}: no model {c[side]!r} in `models`")
        if c["kind"] == "sae":
            if "resid" not in config["saes"]["sites"]:
                raise ConfigError(f"{key}.kind: 'sae' needs 'resid' in saes.sites")
            for side in ("a", "b"):
                seed = c[f"seed_{side}"]
                if seed not in sae_seeds(config, c[side]):
                    raise ConfigError(
                        f"{key}.seed_{side}: model {c[side]!r} has no SAE seed {seed} "
                        f"(add it to saes.seeds or saes.extra_seeds.{c[side]})")
        elif "neuron" not in config["activations"]["sites"]:
            raise ConfigError(f"{key}.kind: 'neuron' needs 'neuron' in activations.sites")


SAE_OVERRIDABLE = ("expansion", "l1", "lr", "lr_decay", "batch_size", "train_tokens")


def sae_seeds(config: dict, model: str) -> list[int]:
    s = config["saes"]
    return sorted(set(s["seeds"]) | set(s["extra_seeds"].get(model, [])))


def sae_options(config: dict, model: str, layer: int) -> dict:
    """The SAE recipe of one (model, layer): the `saes` section with its overrides applied."""
    s = config["saes"]
    opts = {k: v for k, v in s.items() if k not in ("sites", "seeds", "extra_seeds", "overrides")}
    opts.update(s["overrides"].get(model, {}).get(str(layer), {}))
    return opts


def _check_corpus(config: dict) -> None:
    c = config["corpus"]
    if c["source"] in ("glob", "jsonl", "hf") and not c["path"]:
        raise ConfigError(f"corpus.path: required when corpus.source is {c['source']!r}")
    if c["source"] == "glob" and not glob.glob(c["path"], recursive=True):
        raise ConfigError(f"corpus.path: the glob {c['path']!r} matches no file")
    if c["source"] == "jsonl" and not Path(c["path"]).is_file():
        raise ConfigError(f"corpus.path: JSONL file not found: {c['path']}")
    t = config["tokenizer"]
    if t["type"] == "hub" and not t["hub_model"]:
        raise ConfigError("tokenizer.hub_model: required when tokenizer.type is 'hub'")


def load_config(config: dict) -> dict:
    """Validate a config dict as Snakemake hands it over (the Snakefile's entry point)."""
    return validate(config)


def model_layers(config: dict, model: str) -> list[int]:
    """Layers of ``model`` whose activations are stored (all unless ``layers`` is given)."""
    m = config["models"][model]
    return list(m.get("layers") or range(m["n_layers"]))


def as_param(obj: Any) -> str:
    """A canonical JSON string for Snakemake ``params`` (repr-stable, key order fixed)."""
    return json.dumps(obj, sort_keys=True)
