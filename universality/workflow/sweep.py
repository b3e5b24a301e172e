"""The SAE-invariance sweep (issue 19; paper Sec. 4.3.2): variants of one base SAE.

Each variant is the base SAE's recipe (:func:`universality.workflow.config.sae_options`) with a
few keys changed, or another initialisation / data-order seed; ``sweep_entries`` lists what the
sweep rules compare with the base SAE, the permutation null included.
"""
from __future__ import annotations

from universality.sae.config import SWEEP_SEED_KEYS, SAETrainConfig
from universality.workflow.config import (SAE_OVERRIDABLE, ConfigError, model_layers, sae_options,
                                          sae_seeds)

#: The name of the sweep's permutation null (so no variant may take it).
SWEEP_NULL = "null"


def check_sae_sweep(config: dict) -> None:
    w = config["sae_sweep"]
    if w["model"] is None:
        if w["variants"]:
            raise ConfigError("sae_sweep.model: required when sae_sweep.variants is given")
        return
    if w["model"] not in config["models"]:
        raise ConfigError(f"sae_sweep.model: no model {w['model']!r} in `models`")
    if "resid" not in config["saes"]["sites"]:
        raise ConfigError("sae_sweep: needs 'resid' in saes.sites")
    if w["layer"] not in model_layers(config, w["model"]):
        raise ConfigError(f"sae_sweep.layer: layer {w['layer']} of {w['model']!r} is not collected")
    if w["base_seed"] not in sae_seeds(config, w["model"]):
        raise ConfigError(f"sae_sweep.base_seed: model {w['model']!r} has no SAE seed {w['base_seed']}")
    if not w["variants"]:
        raise ConfigError("sae_sweep.variants: name at least one variant")
    allowed = set(SAE_OVERRIDABLE) | set(SWEEP_SEED_KEYS)
    for name, changes in w["variants"].items():
        if name == SWEEP_NULL:
            raise ConfigError(f"sae_sweep.variants.{name}: the name is reserved for the permutation null")
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ConfigError(f"sae_sweep.variants.{name}: unknown keys {unknown} (allowed: {sorted(allowed)})")
        try:
            sweep_config(config, name)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sae_sweep.variants.{name}: {e}") from None


def sweep_run(config: dict, variant: str) -> dict:
    """One sweep variant's run: ``{"options": recipe dict, "seed", "init_seed", "data_seed"}``, the
    base SAE's :func:`sae_options` with the variant's changes (the seeds default to ``base_seed``)."""
    w = config["sae_sweep"]
    changes = dict(w["variants"][variant])
    seeds = {k: int(changes.pop(k, w["base_seed"])) for k in SWEEP_SEED_KEYS}
    options = {**sae_options(config, w["model"], w["layer"]), **changes}
    return {"options": options, "seed": int(w["base_seed"]), **seeds}


def sweep_config(config: dict, variant: str) -> SAETrainConfig:
    """The trainer's config of one sweep variant (raises ``ValueError`` on a bad value)."""
    return SAETrainConfig.from_options(sweep_run(config, variant)["options"])


def sweep_entries(config: dict) -> dict[str, dict]:
    """``{entry: {"variant", "shift"}}``: every variant against the base SAE (shift 0), plus the
    null (:data:`SWEEP_NULL`: the first variant by name, shifted; by name, not by position, since
    YAML writers may reorder keys) when ``null_shift > 0``; empty if no sweep."""
    w = config["sae_sweep"]
    if w["model"] is None:
        return {}
    entries = {v: {"variant": v, "shift": 0} for v in w["variants"]}
    if w["null_shift"] > 0:
        entries[SWEEP_NULL] = {"variant": sorted(w["variants"])[0], "shift": int(w["null_shift"])}
    return entries
