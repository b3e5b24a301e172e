"""Paper scale: the paper preset plans offline, and hub checkpoints load from a local HF cache.

The cache is faked the way huggingface_hub lays it out (``models--{org}--{name}/snapshots/
{commit}/`` + ``refs/{branch}``) with tiny random GPT-NeoX, Mamba and RWKV checkpoints written by
``save_pretrained``; ``HF_HUB_CACHE`` points at it and ``HF_HUB_OFFLINE=1`` forbids the network.
"""
import copy
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


from universality.workflow import config as cfgmod
from universality.zoo import hub
from universality.models import registry as models

PAPER = Path(__file__).resolve().parents[2] / "presets" / "paper.yaml"


# ----------------------------------------------------------------------------------------------
# a fake Hugging Face cache
# ----------------------------------------------------------------------------------------------


def cache_snapshot(cache: Path, repo_id: str, revision: str = "main") -> Path:
    """An empty snapshot folder for ``repo_id`` whose ``refs/{revision}`` points at it."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snap


def tiny_tokenizer():
    """A byte-level BPE of ~300 tokens with ``<|endoftext|>`` (id 0), as Pythia's has."""
    from tokenizers import Tokenizer, decoders, models as tm, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tm.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tiny_model(arch: str, vocab: int, n_layers: int, seed: int = 0, **extra):
    """A random transformers model (the hub classes, not ours) with d_model 16."""
    from transformers import (GPTNeoXConfig, GPTNeoXForCausalLM, MambaConfig, MambaForCausalLM,
                              RwkvConfig, RwkvForCausalLM)

    torch.manual_seed(seed)
    if arch == "gpt_neox":
        c = GPTNeoXConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=n_layers, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=256, rotary_pct=0.25, **extra)
        return GPTNeoXForCausalLM(c).eval()
    if arch == "mamba":
        c = MambaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=n_layers, state_size=4,
                        expand=2, conv_kernel=4, use_cache=False, **extra)
        return MambaForCausalLM(c).eval()
    c = RwkvConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=n_layers, attention_hidden_size=16,
                   intermediate_size=64, context_length=256, **extra)
    return RwkvForCausalLM(c).eval()


#: repo id -> (arch, n_layers, extra config); RWKV rescales every layer in eval mode (the quirk).
TINY_HUB = {
    "tiny-org/pythia-tiny": ("gpt_neox", 2, {}),
    "tiny-org/mamba-tiny-hf": ("mamba", 3, {}),
    "tiny-org/rwkv-tiny-pile": ("rwkv", 2, {"rescale_every": 1}),
}


@pytest.fixture(scope="module")
def fake_cache(tmp_path_factory):
    """(cache folder, {repo_id: the model saved there}, tokenizer vocab size)."""
    cache = tmp_path_factory.mktemp("hf-cache") / "hub"
    tok = tiny_tokenizer()
    vocab = len(tok)
    saved = {}
    for repo_id, (arch, n_layers, extra) in TINY_HUB.items():
        snap = cache_snapshot(cache, repo_id)
        model = tiny_model(arch, vocab, n_layers, **extra)
        model.save_pretrained(str(snap))
        tok.save_pretrained(str(snap))
        saved[repo_id] = model
    return cache, saved, vocab


@pytest.fixture
def offline_cache(fake_cache, monkeypatch):
    cache, saved, vocab = fake_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(hub.DOWNLOAD_ENV, raising=False)
    return cache, saved, vocab


def spec_of(repo_id: str, **changes) -> dict:
    arch, n_layers, _ = TINY_HUB[repo_id]
    return {"arch": arch, "source": "hub", "hub_id": repo_id, "revision": "main", "d_model": 16,
            "n_layers": n_layers, **changes}


# ----------------------------------------------------------------------------------------------
# resolving the cache
# ----------------------------------------------------------------------------------------------


def test_snapshot_resolves_branch_and_commit_offline(offline_cache):
    cache, _, _ = offline_cache
    path, commit = hub.snapshot("tiny-org/pythia-tiny", "main")
    assert path.parent.parent == cache / "models--tiny-org--pythia-tiny"
    assert (path / "config.json").is_file() and len(commit) == 40
    again, same = hub.snapshot("tiny-org/pythia-tiny", commit)  # a pinned commit resolves too
    assert (again, same) == (path, commit)


def test_missing_revision_says_which_download_to_run(offline_cache):
    with pytest.raises(hub.HubCacheMiss) as err:
        hub.snapshot("EleutherAI/pythia-160m", "step143000")
    assert "huggingface-cli download EleutherAI/pythia-160m --revision step143000" in str(err.value)
    with pytest.raises(hub.HubCacheMiss) as err:
        hub.snapshot("tiny-org/pythia-tiny", "no-such-branch")
    assert "--revision no-such-branch" in str(err.value)
    with pytest.raises(hub.HubCacheMiss) as err:
        hub.snapshot("Skylion007/openwebtext", "main", repo_type="dataset")
    assert "huggingface-cli download --repo-type dataset Skylion007/openwebtext --revision main" in str(err.value)


def test_download_needs_opt_in_and_network(monkeypatch):
    monkeypatch.delenv(hub.DOWNLOAD_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not hub.download_allowed()
    monkeypatch.setenv(hub.DOWNLOAD_ENV, "1")
    assert hub.download_allowed()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.download_allowed()


def test_snapshot_without_weights_is_a_cache_miss(offline_cache, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache_snapshot(cache, "tiny-org/only-config")
    (snap / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(hub.HubCacheMiss, match="no weights"):
        hub.model_snapshot("tiny-org/only-config", "main")


# ----------------------------------------------------------------------------------------------
# materialising: what the pipeline reads equals the hub model
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", sorted(TINY_HUB))
def test_materialised_model_computes_what_the_hub_model_computes(offline_cache, tmp_path, repo_id):
    _, saved, vocab = offline_cache
    out = tmp_path / "models" / "m"
    info = hub.materialise("m", spec_of(repo_id), out)
    assert info["hub_id"] == repo_id and len(info["commit"]) == 40 and "config.json" in info["files"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    loaded = models.load_model(out)
    ids = torch.randint(1, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = saved[repo_id]
    # RWKV's reference runs in training mode: the residual stream without eval-mode rescaling.
    reference.train(TINY_HUB[repo_id][0] == "rwkv")
    with torch.no_grad():
        expected = reference(ids).logits.double()
        got = models.logits_of(loaded, ids).double()
    reference.eval()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_preset_disagreeing_with_the_checkpoint_names_the_key(offline_cache, tmp_path):
    with pytest.raises(ValueError, match=r"models\.m\.n_layers: 5, but tiny-org/pythia-tiny has num_hidden_layers = 2"):
        hub.materialise("m", spec_of("tiny-org/pythia-tiny", n_layers=5), tmp_path / "m")
    with pytest.raises(ValueError, match=r"models\.m\.arch: 'mamba'"):
        hub.materialise("m", spec_of("tiny-org/pythia-tiny", arch="mamba"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_rwkv_residual_stream_is_the_same_in_training_and_collection(offline_cache, tmp_path):
    """The RWKV eval-mode rescale halves block outputs; the pipeline's loader switches it off."""
    _, saved, vocab = offline_cache
    out = tmp_path / "rwkv"
    hub.materialise("r", spec_of("tiny-org/rwkv-tiny-pile"), out)
    ids = torch.randint(1, vocab, (2, 10), generator=torch.Generator().manual_seed(1))
    sites = [("resid", 0), ("resid", 1)]
    # transformers' forward (a copy: switching modes rescales its weights in place);
    # hidden_states[l] is block l's output, after the eval-mode halving
    reference = copy.deepcopy(saved["tiny-org/rwkv-tiny-pile"])
    with torch.no_grad():
        train_mode = reference.train()(ids, output_hidden_states=True).hidden_states
        eval_mode = reference.eval()(ids, output_hidden_states=True).hidden_states
        pipeline = models.load_model(out)
        with models.capture(pipeline, sites) as collected:
            pipeline(ids)
    # rescale_every=1: every block output is halved and blocks >= 1 also run on halved weights,
    # so block 1's output is about a quarter (not exactly: the layer norms' epsilon is not
    # scale-free).
    rel = lambda x, y: float((x - y).norm() / y.norm())
    train1, eval1 = train_mode[1], eval_mode[1]
    assert rel(eval1, train1) > 0.4 and rel(4 * eval1, train1) < 0.02
    for site, layer in sites:
        torch.testing.assert_close(collected[(site, layer)], train_mode[layer], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# configuration: hub models plan from the preset or a pinned config.json
# ----------------------------------------------------------------------------------------------


def hub_config(tmp_path, **model) -> dict:
    return {"results": str(tmp_path / "r"), "models": {"m": {"arch": "gpt_neox", "source": "hub",
                                                              "hub_id": "EleutherAI/pythia-160m", **model}}}


def test_pinned_config_json_gives_the_layer_count(tmp_path):
    pin = tmp_path / "config.json"
    pin.write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12}))
    cfg = cfgmod.validate(hub_config(tmp_path, config_json=str(pin)))
    assert cfgmod.model_layers(cfg, "m") == list(range(12)) and cfg["models"]["m"]["d_model"] == 768
    with pytest.raises(cfgmod.ConfigError, match=r"models\.m\.n_layers: 24, but .* num_hidden_layers = 12"):
        cfgmod.validate(hub_config(tmp_path, config_json=str(pin), n_layers=24))
    with pytest.raises(cfgmod.ConfigError, match=r"models\.m\.arch: 'gpt_neox', but .* 'mamba'"):
        pin.write_text(json.dumps({"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24}))
        cfgmod.validate(hub_config(tmp_path, config_json=str(pin)))
    with pytest.raises(cfgmod.ConfigError, match=r"models\.m\.config_json: no such file"):
        cfgmod.validate(hub_config(tmp_path, config_json=str(tmp_path / "nope.json")))


def test_hub_model_without_sizes_is_refused(tmp_path):
    with pytest.raises(cfgmod.ConfigError, match=r"models\.m\.d_model, models\.m\.n_layers"):
        cfgmod.validate(hub_config(tmp_path))


# ----------------------------------------------------------------------------------------------
# the paper DAG, planned offline without weights
# ----------------------------------------------------------------------------------------------


def dry_run(repo, *args, env=None):
    """(stdout, child CPU seconds) of ``snakemake -n`` in the repository."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "snakemake", "-n", *args]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, cpu


def job_stats(out: str) -> dict:
    counts = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_paper_preset_plans_offline_with_the_papers_job_counts(repo, tmp_path):
    empty_cache = tmp_path / "empty-hf-cache"
    empty_cache.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(empty_cache), "HF_HOME": str(empty_cache), "HF_HUB_OFFLINE": "1"}
    # Outputs under tmp_path (none exist there), so every job is planned.
    out, cpu = dry_run(repo, "--configfile", str(PAPER), "--config", f"results={tmp_path / 'r'}", env=env)
    counts = job_stats(out)
    paper = yaml.safe_load(PAPER.read_text())
    layers = {m: spec["n_layers"] for m, spec in paper["models"].items()}
    assert layers == {"pythia-160m": 12, "pythia-160m-seed1": 12, "mamba-130m": 24, "rwkv-169m": 12}
    # The paper's stages (other rules, e.g. a report, may exist beside them).
    assert counts["hub_model"] == 4 and "train_model" not in counts
    assert counts["activations"] == 4 * 2                   # one job per (model, site): all layers at once
    assert counts["train_sae"] == 12 + 12 + 24 + 12 + 12    # + the SAE-seed skyline on Pythia
    assert counts["features"] == counts["train_sae"]
    # + the neuron baseline's null (issue 18); + RWKV's neuron baseline and both its nulls (issue 14)
    assert counts["mppc"] == len(paper["comparisons"]) == 10
    pairs = {}
    for comp, la, lb in re.findall(r"pearson/([\w.-]+)/A(\d+)_B(\d+)\.npz", out):
        pairs.setdefault(comp, set()).add((int(la), int(lb)))
    assert len(pairs["cross_arch"]) == 12 * 24 and len(pairs["neuron_baseline"]) == 12 * 24
    assert len(pairs["cross_arch_null"]) == len(pairs["neuron_baseline_null"]) == 12 * 24
    assert len(pairs["model_seed"]) == len(pairs["sae_seed"]) == len(pairs["cross_arch_rwkv"]) == 12 * 12
    assert len(pairs["neuron_baseline_rwkv"]) == len(pairs["cross_arch_rwkv_null"]) == 12 * 12
    assert len(pairs["neuron_baseline_rwkv_null"]) == 12 * 12
    assert counts["pearson_pair"] == sum(map(len, pairs.values())) == 4 * 288 + 6 * 144
    # Planning needs no weights and no network; on an idle core it takes ~5 s of CPU (README).
    # The bound is loose on purpose (shared CI machines) but catches e.g. loading checkpoints.
    assert cpu < 15, f"planning took {cpu:.1f} s of CPU"
    assert not any(empty_cache.iterdir()), "planning touched the Hugging Face cache"


# ----------------------------------------------------------------------------------------------
# the hub rules end to end: tokenizer, hub_model and activations from the fake cache
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_hub_models_run_through_the_pipeline_offline(repo, fake_cache, tmp_path):
    cache, saved, _ = fake_cache
    names = {"pythia": "tiny-org/pythia-tiny", "mamba": "tiny-org/mamba-tiny-hf", "rwkv": "tiny-org/rwkv-tiny-pile"}
    config = {
        "results": str(tmp_path / "r"), "backend": "cpu",
        "corpus": {"source": "stdlib", "max_documents": 30, "eval_fraction": 0.3},
        "tokenizer": {"type": "hub", "hub_model": names["pythia"], "revision": "main", "max_len": 256},
        "training": {"eval_tokens": 256},
        "models": {k: {"arch": TINY_HUB[v][0], "source": "hub", "hub_id": v, "revision": "main",
                       "d_model": 16, "n_layers": TINY_HUB[v][1]} for k, v in names.items()},
        "activations": {"sites": ["resid"], "sae_tokens": 256, "eval_tokens": 256, "batch_size": 8, "chunk_rows": 128},
        "comparisons": {},
    }
    cfg_path = tmp_path / "hub.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    root = tmp_path / "r"
    targets = [str(root / "models" / f"{m}.json") for m in names]
    targets += [str(root / "activations" / m / "resid.json") for m in names]
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop(hub.DOWNLOAD_ENV, None)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
           "--cores", "2", *targets, "--configfile", str(cfg_path)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "hub_model" in proc.stdout + proc.stderr and "train_model" not in proc.stdout + proc.stderr
    for model, repo_id in names.items():
        info = json.loads((root / "models" / f"{model}.json").read_text())
        commit = hashlib.sha1(f"{repo_id}@main".encode()).hexdigest()
        assert (info["hub_id"], info["revision"], info["commit"]) == (repo_id, "main", commit)
        assert 0 < info["eval_loss_nats"] < 10
        manifest = json.loads((root / "activations" / model / "resid.json").read_text())
        assert sorted(map(int, manifest["layers"])) == list(range(TINY_HUB[repo_id][1]))
