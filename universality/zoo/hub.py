"""Hub models and data sets from the local Hugging Face cache, offline, at pinned revisions.

Paper-scale presets name hub checkpoints (``EleutherAI/pythia-160m``, ``state-spaces/mamba-130m-hf``,
``RWKV/rwkv-4-169m-pile``). Nothing is downloaded at run time unless the user opts in with
``UNIVERSALITY_HUB_DOWNLOAD=1`` (and ``HF_HUB_OFFLINE`` is not set): a revision missing from the
cache raises :class:`HubCacheMiss`, whose message is the exact ``huggingface-cli download`` command
to run on a connected machine.

The cache is the standard layout ``{cache}/models--{org}--{name}/snapshots/{commit}/...`` with
``refs/{branch}`` holding the commit of a branch; ``cache`` is ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read at call time, not import time, so a test
or a job can point it elsewhere).

:func:`materialise` loads a snapshot with transformers (safetensors, or a ``.bin`` through
``torch.load(weights_only=True)``; never remote code), checks it against the preset's
``arch``/``d_model``/``n_layers`` (the numbers the DAG was planned with) and writes a
``save_pretrained`` float32 safetensors folder, the same format as a trained toy model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

#: Environment variable that allows downloads of missing revisions (off by default).
DOWNLOAD_ENV = "UNIVERSALITY_HUB_DOWNLOAD"
#: config.json keys holding (d_model, n_layers), per architecture (all three use the same names).
_CONFIG_KEYS = {"d_model": "hidden_size", "n_layers": "num_hidden_layers"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class HubCacheMiss(FileNotFoundError):
    """A repository/revision is not in the local cache; the message says how to fetch it."""


def cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def download_allowed() -> bool:
    """Opt-in download: ``UNIVERSALITY_HUB_DOWNLOAD=1`` and not ``HF_HUB_OFFLINE``."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return os.environ.get(DOWNLOAD_ENV, "") == "1" and not offline


def download_command(repo_id: str, revision: str, repo_type: str = "model") -> str:
    """The shell command that puts ``repo_id`` at ``revision`` into the cache."""
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return f"huggingface-cli download{kind} {repo_id} --revision {revision}"


def _miss(repo_id: str, revision: str, repo_type: str, what: str) -> HubCacheMiss:
    cmd = download_command(repo_id, revision, repo_type)
    return HubCacheMiss(
        f"{repo_type} {repo_id!r} at revision {revision!r}: {what} in the local Hugging Face cache "
        f"{cache_dir()}. On a machine with network access run\n    {cmd}\n(`hf download` takes the "
        f"same arguments), then copy that cache folder here or point HF_HUB_CACHE at it. To let "
        f"this run download instead, set {DOWNLOAD_ENV}=1 and unset HF_HUB_OFFLINE."
    )


def snapshot(repo_id: str, revision: str, repo_type: str = "model") -> tuple[Path, str]:
    """(local snapshot folder, resolved commit) of ``repo_id`` at ``revision`` (branch, tag or commit).

    Offline from the cache; downloads only when :func:`download_allowed`.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    kwargs = dict(repo_id=repo_id, revision=revision, repo_type=repo_type, cache_dir=str(cache_dir()))
    try:
        path = snapshot_download(local_files_only=True, **kwargs)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        if not download_allowed():
            raise _miss(repo_id, revision, repo_type, "not found") from None
        path = snapshot_download(local_files_only=False, **kwargs)
    path = Path(path)
    return path, path.name


def model_snapshot(repo_id: str, revision: str) -> tuple[Path, str]:
    """:func:`snapshot` of a model, checked to hold a config.json and weights."""
    path, commit = snapshot(repo_id, revision)
    if not (path / "config.json").is_file():
        raise _miss(repo_id, revision, "model", "config.json is missing from the snapshot")
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in path.iterdir()):
        raise _miss(repo_id, revision, "model", "no weights (*.safetensors, *.bin) are")
    return path, commit


def check_config(name: str, spec: dict, hf_config: dict) -> None:
    """Raise ValueError naming the preset key if the checkpoint is not what the DAG was planned for."""
    found = hf_config.get("model_type")
    if found != spec["arch"]:
        raise ValueError(f"models.{name}.arch: {spec['arch']!r}, but {spec['hub_id']} is a {found!r} model")
    for key, hf_key in _CONFIG_KEYS.items():
        if spec.get(key) is not None and hf_config.get(hf_key) != spec[key]:
            raise ValueError(
                f"models.{name}.{key}: {spec[key]}, but {spec['hub_id']} has {hf_key} = "
                f"{hf_config.get(hf_key)} (fix the preset: the DAG is planned from it)")


def materialise(name: str, spec: dict, out_dir: str | Path) -> dict:
    """Write the hub model ``spec`` (a ``models:`` entry, ``source: hub``) to ``out_dir``.

    Returns provenance: hub id, requested revision, resolved commit, source files with their
    sha256, parameter count and the checked config values.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from universality.core import store
    from universality.core.integrity import file_sha256

    revision = spec.get("revision") or "main"
    path, commit = model_snapshot(spec["hub_id"], revision)
    hf_config = json.loads((path / "config.json").read_text())
    check_config(name, spec, hf_config)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, dtype=torch.float32)
    with store.atomic_output(out_dir, sealed=True) as tmp:  # integrity record: checked by every load
        model.save_pretrained(str(tmp), safe_serialization=True)
    files = {p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file()}
    return {
        "model": name,
        "source": "hub",
        "hub_id": spec["hub_id"],
        "revision": revision,
        "commit": commit,
        "files": files,
        "arch": hf_config.get("model_type"),
        "d_model": hf_config.get("hidden_size"),
        "n_layers": hf_config.get("num_hidden_layers"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }

