"""Configuration: schema validation with defaults, then semantic checks with readable errors.

The Snakefile calls :func:`load_config` once; every error names the offending key
(``models.mamba-s0.arch``), file or value, so a researcher can fix the YAML without reading code.
"""
from __future__ import annotations

import copy
import glob
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from universality.circuits.config import CircuitsConfig
from universality.compare.config import MeasuresConfig, PearsonConfig
from universality.data.config import ActivationsConfig, CorpusConfig, TokenizerConfig
from universality.report.config import JudgeConfig, ReportConfig
from universality.sae.config import SAESweepConfig, SAETrainConfig
from universality.zoo.config import TrainingConfig
from universality.models import registry
from universality.workflow.roles import comparison_role, cross_pairs, inferred_differences, same_a

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"



def _arch(name: str, m: dict):
    """The registered adapter of ``models.<name>.arch``; ConfigError naming the known ones."""
    if m["arch"] not in registry.ARCHITECTURES:
        raise ConfigError(f"models.{name}.arch: {m['arch']!r} is not one of the registered architectures "
                          f"{sorted(registry.ARCHITECTURES)}")
    return registry.get(m["arch"])


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
    _check_finite(config)  # first: NaN passes every `minimum`, and -inf fails one with a vaguer message
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_key_path(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    _check_models(config)
    _check_names(config)
    _check_results(config)
    _check_sae_override_values(config, schema)
    _check_sae_batches(config)
    _check_shifts(config)
    _check_corpus(config)
    _check_saes(config)
    _check_comparisons(config)
    _check_report(config)
    _check_circuits(config)
    # sweep and judge plans build on this module's plans: imported here, not at the top
    from universality.workflow.judge import check_judge
    from universality.workflow.sweep import check_sae_sweep

    check_judge(config)
    check_sae_sweep(config)
    return config


def _apply_config_json(name: str, m: dict) -> None:
    """Fill ``d_model``/``n_layers`` of a hub model from its pinned local config.json (no weights)."""
    path = Path(m["config_json"])
    if not path.is_file():
        raise ConfigError(f"models.{name}.config_json: no such file {path}")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"models.{name}.config_json: {path} is not valid JSON ({e.msg})") from None
    if hf.get("model_type") != m["arch"]:
        raise ConfigError(f"models.{name}.arch: {m['arch']!r}, but {path} is a {hf.get('model_type')!r} config")
    for key, hf_key in (("d_model", "hidden_size"), ("n_layers", "num_hidden_layers")):
        if hf_key not in hf:
            raise ConfigError(f"models.{name}.config_json: {path} has no {hf_key!r}")
        if m.get(key) is None:
            m[key] = hf[hf_key]
        elif m[key] != hf[hf_key]:
            raise ConfigError(f"models.{name}.{key}: {m[key]}, but {path} says {hf_key} = {hf[hf_key]}")


def _check_models(config: dict) -> None:
    for name, m in config["models"].items():
        arch = _arch(name, m)
        if m["source"] == "hub" and m.get("config_json"):
            _apply_config_json(name, m)
        required = REQUIRED_HUB_FIELDS if m["source"] == "hub" else arch.required_fields
        missing = [f for f in required if m.get(f) is None]
        if missing:
            raise ConfigError(
                f"models.{name}: a {m['source']} {m['arch']} model needs "
                + ", ".join(f"models.{name}.{f}" for f in missing)
            )
        problem = arch.check_spec(m) if m["source"] == "train" else None
        if problem:
            raise ConfigError(f"models.{name}.{problem[0]}: {problem[1]}")
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


#: Keys of ``saes`` that ``saes.overrides.<model>.<layer>`` may change (from the trainer's config).
SAE_OVERRIDABLE = SAETrainConfig.overridable()


def sae_seeds(config: dict, model: str) -> list[int]:
    s = config["saes"]
    return sorted(set(s["seeds"]) | set(s["extra_seeds"].get(model, [])))


def sae_options(config: dict, model: str, layer: int) -> dict:
    """The SAE recipe of one (model, layer): the `saes` keys of :class:`SAETrainConfig` with the
    overrides applied (``SAETrainConfig.from_options`` builds the trainer's config from it)."""
    s = config["saes"]
    opts = {k: s[k] for k in SAETrainConfig.schema_keys() if k in s}
    opts.update(s["overrides"].get(model, {}).get(str(layer), {}))
    return opts


def sae_config(config: dict, model: str, layer: int) -> SAETrainConfig:
    """The trainer's config of one (model, layer): :func:`sae_options` as :class:`SAETrainConfig`."""
    return SAETrainConfig.from_options(sae_options(config, model, layer))


#: The dataclass of each defaulted section (the single source of its defaults); `saes`: sae_config.
STAGE_CONFIGS = {"corpus": CorpusConfig, "tokenizer": TokenizerConfig, "training": TrainingConfig,
                 "activations": ActivationsConfig, "pearson": PearsonConfig, "measures": MeasuresConfig,
                 "report": ReportConfig, "circuits": CircuitsConfig, "sae_sweep": SAESweepConfig,
                 "judge": JudgeConfig}


def stage_config(config: dict, section: str):
    """The validated ``config[section]`` as its :data:`STAGE_CONFIGS` dataclass (lists as tuples)."""
    values = config[section]
    return STAGE_CONFIGS[section](**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


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


def model_training(config: dict, model: str) -> dict:
    """The training recipe of one model: the `training` section with the model's own
    `training:` overrides applied (so changing one model's recipe reruns only that model)."""
    return {**config["training"], **(config["models"][model].get("training") or {})}


def model_layers(config: dict, model: str) -> list[int]:
    """Layers of ``model`` whose activations are stored (all unless ``layers`` is given)."""
    m = config["models"][model]
    return list(m.get("layers") or range(m["n_layers"]))


def as_param(obj: Any) -> str:
    """A canonical JSON string for Snakemake ``params`` (repr-stable, key order fixed)."""
    return json.dumps(obj, sort_keys=True)


# --- report (issue 5): which comparison plays which role in the report ---


def difference_pairs(value: list | None) -> list[list[str]] | None:
    """``report.difference`` as a list of ``[cross, skyline]`` pairs: the single form
    ``[cross, skyline]`` is one pair; None stays None (inferred)."""
    if value is None:
        return None
    return [list(value)] if all(isinstance(v, str) for v in value) else [list(p) for p in value]


def report_plan(config: dict) -> dict:
    """Roles of the comparisons in the report, from ``report`` keys or inferred from the config.

    Returns ``{"main": [names with shift 0], "nulls": [shift > 0], "chance": {main: null or None},
    "differences": [[cross, skyline], ...], "pairs": [cross pair, ...], "roles": {main: role},
    "cards": [names], "complexity": [[model, seed], ...], "figures": [names]}``.
    A comparison's chance level is the null with its kind, A and B (else the first with its A);
    ``differences`` by default pairs every cross-architecture SAE comparison with the first
    model-seed one of its A (untrained controls are never a skyline); ``pairs``
    (:func:`universality.workflow.roles.cross_pairs`) groups each cross pair with its null, neuron
    baseline and the baseline's null; cards default to every cross pair.
    """
    comps, r = config["comparisons"], config["report"]
    main = [k for k, c in comps.items() if c["shift"] == 0]
    nulls = [k for k, c in comps.items() if c["shift"] > 0]
    key = lambda c: (c["kind"], c["a"], c["b"], c["seed_a"], c["seed_b"])
    chance = {}
    for k in main:
        exact = [n for n in nulls if key(comps[n]) == key(comps[k])]
        near = [n for n in nulls if same_a(comps[n], comps[k])]
        chance[k] = (exact + near + [None])[0]
    differences = difference_pairs(r["difference"])
    if differences is None:
        differences = inferred_differences(config, main)
    pairs = cross_pairs(config, main, chance, differences)
    cards = r["cards"]
    if cards is None:
        first_sae = [k for k in main if comps[k]["kind"] == "sae"][:1]
        cards = [p["cross"] for p in pairs] or [d[0] for d in differences] or first_sae
    complexity = sorted({(comps[k]["a"], comps[k]["seed_a"]) for k in main if comps[k]["kind"] == "sae"})
    figures = ["distributions"] + (["difference"] if differences else []) + ["depth", "layer_groups",
                                                                            "forward_reverse"]
    figures += ["complexity"] if complexity else []
    return {"main": main, "nulls": nulls, "chance": chance, "differences": differences, "pairs": pairs,
            "roles": {k: comparison_role(config, k) for k in main}, "cards": list(cards),
            "complexity": [list(x) for x in complexity], "figures": figures}


def _check_report(config: dict) -> None:
    comps, r = config["comparisons"], config["report"]
    for p, pair in enumerate(difference_pairs(r["difference"]) or []):
        where = "report.difference" + (f"[{p}]" if not isinstance(r["difference"][0], str) else "")
        if len(pair) != 2:
            raise ConfigError(f"{where}: {pair} is not a pair [cross, skyline]")
        for i, name in enumerate(pair):
            if name not in comps:
                raise ConfigError(f"{where}[{i}]: no comparison {name!r} in `comparisons`")
            if comps[name]["shift"]:
                raise ConfigError(f"{where}[{i}]: {name!r} is a permutation null (shift > 0)")
        if not same_a(*(comps[n] for n in pair)):
            raise ConfigError(f"{where}: {pair} do not share A (kind, a, seed_a), "
                              "so their features cannot be paired")
    for i, name in enumerate(r["cards"] or []):
        if name not in comps:
            raise ConfigError(f"report.cards[{i}]: no comparison {name!r} in `comparisons`")
        if comps[name]["kind"] != "sae":
            raise ConfigError(f"report.cards[{i}]: {name!r} is a {comps[name]['kind']} comparison; cards need SAE features")
    bins = r["card_bins"]
    if any(b >= c for b, c in zip(bins, bins[1:])):
        raise ConfigError(f"report.card_bins: {bins} is not strictly increasing")


# --- circuits (issue 6): which models are analysed, and whether the prompts fit ---
#: The circuit experiments, by the ``circuits`` capability of an architecture's adapter
#: ("ssm": Mamba state paths, rules circuits_ssm; "heads": attention heads, circuits_heads;
#: "wkv": RWKV WKV-state paths, circuits_wkv).
CIRCUIT_KINDS = ("ssm", "heads", "wkv")


def _circuits_of(config: dict, model: str) -> str | None:
    return registry.get(config["models"][model]["arch"]).circuits


def circuit_models(config: dict) -> dict[str, list[str]]:
    """``{"ssm": [...], "heads": [...], "wkv": [...]}``: the models each circuit rule analyses."""
    names = config["circuits"]["models"]
    if names is None:
        names = [m for m in config["models"] if _circuits_of(config, m)]
    return {kind: [m for m in names if _circuits_of(config, m) == kind] for kind in CIRCUIT_KINDS}


def _check_circuits(config: dict) -> None:
    c = config["circuits"]
    for i, name in enumerate(c["models"] or []):
        if name not in config["models"]:
            raise ConfigError(f"circuits.models[{i}]: no model {name!r} in `models`")
        if _circuits_of(config, name) not in CIRCUIT_KINDS:
            able = sorted(a.name for a in registry.ARCHITECTURES.values() if a.circuits in CIRCUIT_KINDS)
            raise ConfigError(f"circuits.models[{i}]: {name!r} is {config['models'][name]['arch']}; "
                              f"circuits support {able}")
    max_len = config["tokenizer"]["max_len"]
    for i, d in enumerate(c["distances"]):
        if d + 6 > max_len:  # BOS + 4 prefix tokens + A1..A2 (universality.circuits.induction.prompt_length)
            raise ConfigError(f"circuits.distances[{i}]: a distance-{d} prompt has {d + 6} tokens, "
                              f"more than tokenizer.max_len = {max_len}")
    if 2 * c["score_length"] + 1 > max_len:
        raise ConfigError(f"circuits.score_length: [BOS] R R rows of {2 * c['score_length'] + 1} tokens "
                          f"exceed tokenizer.max_len = {max_len}")


# --- reliability (issue 20): values that would run but give wrong numbers, or fail late ---
#: Top-level folders of the source tree that `results` must never be (or be inside of).
SOURCE_DIRS = ("universality", "rules", "scripts", "schemas", "tests", "presets", "envs", "profiles",
               "report", "docs", "benchmarks", ".git")
REPO_ROOT = SCHEMA_PATH.parents[1]


def _walk(node: Any, key: str = "") -> Any:
    """``(dotted key, value)`` of every leaf of a config."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, node


def _check_finite(config: dict) -> None:
    """NaN and inf (YAML ``.nan`` / ``.inf``) pass every ``minimum`` of a schema: refuse them."""
    for key, value in _walk(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not a finite number")


def _check_names(config: dict) -> None:
    """Model / comparison names are path parts: unique ignoring case (case-insensitive disks);
    a model's layers unique."""
    for section in ("models", "comparisons"):
        seen: dict[str, str] = {}
        for name in config[section]:
            if name.lower() in seen:
                raise ConfigError(f"{section}.{name}: differs from {section}.{seen[name.lower()]} only in case "
                                  "(their outputs would share paths on a case-insensitive file system)")
            seen[name.lower()] = name
    for name, m in config["models"].items():
        layers = m.get("layers") or []
        dup = sorted({l for l in layers if layers.count(l) > 1})
        if dup:
            raise ConfigError(f"models.{name}.layers: layer(s) {dup} listed twice")


def _check_results(config: dict) -> None:
    """`results` is a directory of its own: not empty, not the repository or one of its source folders."""
    results = config["results"]
    if not str(results).strip():
        raise ConfigError("results: empty; give an output directory (default 'results')")
    where = Path(results).expanduser().resolve()
    if where == REPO_ROOT:
        raise ConfigError(f"results: {results!r} is the repository itself ({REPO_ROOT}); use e.g. 'results'")
    for d in SOURCE_DIRS:
        src = REPO_ROOT / d
        if where == src or src in where.parents:
            raise ConfigError(f"results: {results!r} resolves to {where}, inside the source folder {src}")


def _check_sae_override_values(config: dict, schema: dict) -> None:
    """``saes.overrides.<model>.<layer>.<key>`` values obey the schema of ``saes.<key>``."""
    props = schema["properties"]["saes"]["properties"]
    for model, layers in config["saes"]["overrides"].items():
        for layer, changes in layers.items():
            for k, v in changes.items():
                if k not in props:
                    continue  # unknown keys: _check_saes names them
                errors = list(jsonschema.Draft202012Validator(props[k]).iter_errors(v))
                if errors:
                    raise ConfigError(f"saes.overrides.{model}.{layer}.{k}: {errors[0].message}")


def sae_train_rows(config: dict, site: str) -> int:
    """Rows an SAE of ``site`` trains on: the resid store's sae segment, or (neuron: eval rows only)
    the store less its held-out tail (universality.sae.buffer.split_rows)."""
    a = config["activations"]
    if site == "resid":
        return int(a["sae_tokens"])
    n = int(a["eval_tokens"])
    return n - int(math.ceil(SAETrainConfig().eval_fraction * n))


def _check_sae_batches(config: dict) -> None:
    for model in config["models"]:
        for layer in model_layers(config, model):
            opts = sae_options(config, model, layer)
            over = str(layer) in config["saes"]["overrides"].get(model, {})
            key = f"saes.overrides.{model}.{layer}.batch_size" if over else "saes.batch_size"
            for site in config["saes"]["sites"]:
                rows = sae_train_rows(config, site)
                if opts["batch_size"] > rows:
                    raise ConfigError(f"{key}: {opts['batch_size']} is more than the {rows} stored {site} rows an "
                                      f"SAE of {model} L{layer} trains on (raise activations.sae_tokens or lower it)")


def _check_shifts(config: dict) -> None:
    """A permutation null must move every token out of its own window: shift mod N (N = eval rows)
    at least tokenizer.max_len away from 0."""
    n, max_len = int(config["activations"]["eval_tokens"]), int(config["tokenizer"]["max_len"])
    for name, c in config["comparisons"].items():
        if not c["shift"]:
            continue
        r = c["shift"] % n
        if min(r, n - r) < max_len:
            raise ConfigError(f"comparisons.{name}.shift: {c['shift']} is {min(r, n - r)} tokens from 0 mod the "
                              f"{n} eval tokens (activations.eval_tokens); a null needs a distance of at least "
                              f"tokenizer.max_len = {max_len} (e.g. shift {n // 2 - 1})")


def token_budget(config: dict, split: str) -> dict[str, int]:
    """``{config key: scored tokens needed}`` of token set ``split`` (checked by the token_budget rule,
    before any model is trained)."""
    a = config["activations"]
    if split == "train":
        return {"activations.sae_tokens": int(a["sae_tokens"])} if "resid" in a["sites"] else {}
    # every model's eval loss (trained: its recipe, overrides included; hub: training.eval_tokens)
    budget = {"activations.eval_tokens": int(a["eval_tokens"]), "training.eval_tokens": int(config["training"]["eval_tokens"])}
    for name, spec in config["models"].items():
        own = (spec.get("training") or {}).get("eval_tokens")
        if own is not None and spec.get("source", "train") == "train":
            budget[f"models.{name}.training.eval_tokens"] = int(own)
    return budget
