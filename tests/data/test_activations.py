import numpy as np
import pytest
import torch

from universality.data import activations
from universality.data import corpus
from universality.models import registry as models
from universality.core import store
from conftest import make_tokens as _make_tokens

VOCAB, MAX_LEN = 50, 24


def make_tokens(path, n_windows, seed):
    return _make_tokens(path, n_windows, seed, VOCAB, MAX_LEN)


def test_token_rows_reference(tmp_path):
    ts = corpus.TokenSet(make_tokens(tmp_path / "t.zarr", 10, 0))
    win, pos = activations.token_rows(ts, 57)
    ref = [(w, p) for w in range(len(ts)) for p in range(len(ts.window(w))) if ts.window(w)[p] != 0][:57]
    assert list(zip(win.tolist(), pos.tolist())) == ref
    with pytest.raises(ValueError, match="only .* scored tokens, 100000 requested"):
        activations.token_rows(ts, 100_000)


SPECS = {
    "gpt_neox": {"arch": "gpt_neox", "d_model": 16, "n_layers": 3, "n_heads": 2},
    "mamba": {"arch": "mamba", "d_model": 16, "n_layers": 3, "d_state": 4, "expand": 2, "d_conv": 4},
    "rwkv": {"arch": "rwkv", "d_model": 16, "n_layers": 3, "d_mlp": 48},
}


def rwkv_reference_sites(model, ids):
    """RWKV through transformers' modules: hidden_states[l] is block l's output; neurons by hand."""
    hf = model.to_hf().train()                   # train mode: transformers' cache-free forward
    out = hf(ids, output_hidden_states=True)
    neuron = []
    for l, block in enumerate(hf.rwkv.blocks):
        h = block.pre_ln(hf.rwkv.embeddings(ids)) if l == 0 else out.hidden_states[l - 1]
        x = block.ln2(h + block.attention(block.ln1(h))[0])
        ffn = block.feed_forward
        neuron.append(torch.relu(ffn.key(x * ffn.time_mix_key + ffn.time_shift(x) * (1 - ffn.time_mix_key))) ** 2)
    return list(out.hidden_states[:3]), neuron


def reference_sites(model, arch, ids):
    """Activations by an independent route: output_hidden_states and hand-computed neurons."""
    with torch.no_grad():
        if arch == "gpt_neox":
            hf = model.to_hf().eval()           # transformers' forward, same weights
            out = hf(ids, output_hidden_states=True)
            # transformers' last hidden state is after the final norm; the residual stream is before
            resid = [out.hidden_states[l + 1] for l in range(3)]
            neuron = []
            for l in range(3):
                block = hf.gpt_neox.layers[l]
                # parallel residual: the MLP reads post_attention_layernorm of the block input
                h = block.mlp.dense_h_to_4h(block.post_attention_layernorm(out.hidden_states[l]))
                neuron.append(block.mlp.act(h))
            return resid, neuron
        if arch == "rwkv":
            return rwkv_reference_sites(model, ids)
        hf = model.to_hf().eval()
        # transformers 5 Mamba: hidden_states[l] is the output of block l (no embeddings entry)
        out = hf(ids, output_hidden_states=True)
        resid, neuron = [], []
        for l in range(3):
            block_in = hf.backbone.embeddings(ids) if l == 0 else out.hidden_states[l - 1]
            mixer = hf.backbone.layers[l].mixer
            x = hf.backbone.layers[l].norm(block_in)
            proj = mixer.in_proj(x).transpose(1, 2)
            hs, gate = proj.chunk(2, dim=1)
            conv = mixer.act(mixer.conv1d(hs)[..., : ids.shape[1]])
            neuron.append(torch.cat([conv.transpose(1, 2), torch.nn.functional.silu(gate.transpose(1, 2))], -1))
            resid.append(out.hidden_states[l])
        return resid, neuron


@pytest.mark.parametrize("arch", ["gpt_neox", "mamba", "rwkv"])
@pytest.mark.parametrize("site", ["resid", "neuron"])
def test_collect_matches_independent_forward(tmp_path, arch, site):
    torch.manual_seed(0)
    model = models.build_model(models.build_config(SPECS[arch], VOCAB, MAX_LEN, 0)).eval()
    models.save_model(model, tmp_path / "model")
    model = models.load_model(tmp_path / "model")
    sae_set, eval_set = make_tokens(tmp_path / "a.zarr", 12, 1), make_tokens(tmp_path / "b.zarr", 9, 2)
    out = tmp_path / "acts"
    manifest = activations.collect(str(tmp_path / "model"), {"sae": sae_set, "eval": eval_set}, site,
                                   [0, 1, 2], 60, 40, str(out), model_name="m", dtype="float32",
                                   batch_size=5, chunk_rows=16)
    n_rows = 40 if site == "neuron" else 100
    assert set(manifest["layers"]) == {"0", "1", "2"}
    # rows in the contract's order, recomputed window by window
    expected = {l: [] for l in range(3)}
    plan = [("eval", eval_set, 40)] if site == "neuron" else [("sae", sae_set, 60), ("eval", eval_set, 40)]
    for _, path, n in plan:
        ts = corpus.TokenSet(path)
        win, pos = activations.token_rows(ts, n)
        for w in np.unique(win):
            ids = torch.from_numpy(ts.window(int(w)).astype(np.int64))[None]
            resid, neuron = reference_sites(model, arch, ids)
            for l in range(3):
                src = resid[l] if site == "resid" else neuron[l]
                expected[l].append(src[0, pos[win == w]].numpy())
    final_norm = model.gpt_neox.final_layer_norm if arch == "gpt_neox" else None
    for l in range(3):
        arr = store.open_array(out / f"L{l}.zarr")
        assert arr.shape[0] == n_rows and arr.attrs["layer"] == l and arr.attrs["site"] == site
        assert arr.attrs["segments"] == ({"eval": [0, 40]} if site == "neuron" else {"sae": [0, 60], "eval": [60, 100]})
        got = arr[:]
        if site == "resid" and l == 2 and arch == "gpt_neox":
            with torch.no_grad():
                got = final_norm(torch.from_numpy(got)).numpy()
        np.testing.assert_allclose(got, np.concatenate(expected[l]), atol=2e-5, rtol=1e-4)
