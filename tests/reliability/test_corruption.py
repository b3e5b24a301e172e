"""Each corruption of a store or checkpoint -> an error naming the file, never numbers."""
import json
import os
import re
import zipfile

import numpy as np
import pytest

from universality.compare import mppc, pearson
from universality.core import store
from universality.core.integrity import StoreError
from universality.data import corpus
from universality.sae.features import CSRStore, DenseEval
from universality.sae.model import SAE, WEIGHTS_FILENAME
from universality.sae.train import train_sae
from tests.reliability.conftest import write_acts


def chunk_files(path):
    return sorted(p for p in path.rglob("*") if p.is_file() and "/c/" in str(p) + "/")


def test_clean_stores_read(work):
    assert store.open_array(work / "L0.zarr").shape == (2000, 16)
    assert CSRStore(str(work / "f.zarr")).shape == (1000, 64)
    SAE.load(work / "sae")


def test_deleted_activation_chunk_is_an_error_not_zeros(work):
    path = work / "L0.zarr"
    (path / "c" / "3" / "0").unlink()
    with pytest.raises(StoreError, match=re.escape(str(path)) + r".*missing.*c/3/0.*zeros"):
        store.open_array(path)
    with pytest.raises(StoreError, match="missing"):
        DenseEval(str(path))


def test_swapped_activation_chunk_is_an_error(work):
    c = work / "L0.zarr" / "c"
    # another valid chunk of the same array, same size class: caught by its hash
    (c / "2" / "0").write_bytes((c / "5" / "0").read_bytes())
    with pytest.raises(StoreError, match=r"c/2/0.*(sha256|bytes)"):
        store.open_array(work / "L0.zarr")


def test_random_bytes_in_a_chunk_are_an_error(work):
    f = work / "L0.zarr" / "c" / "1" / "0"
    b = bytearray(f.read_bytes())
    b[40:60] = os.urandom(20)
    f.write_bytes(bytes(b))
    with pytest.raises(StoreError, match=r"c/1/0.*sha256"):
        store.open_array(work / "L0.zarr")


def test_unsealed_store_with_a_lost_chunk_is_reported(tmp_path, capfd):
    """No record (an outside store, read with external=True): a chunk absent from the grid is
    named on stderr. Without external=True an unsealed store is refused (test_inputs.py)."""
    arr = store.create_array(tmp_path / "x.zarr", (100, 4), "float32", chunk_rows=10)
    arr[:] = np.zeros((100, 4), np.float32)  # empty chunks are written too (write_empty_chunks)
    store.open_array(tmp_path / "x.zarr", external=True)
    assert "absent" not in capfd.readouterr().err
    (tmp_path / "x.zarr" / "c" / "4" / "0").unlink()
    store.open_array(tmp_path / "x.zarr", external=True)
    assert "no integrity record and chunk 'c/4/0'" in capfd.readouterr().err


def test_deleted_record_of_a_pipeline_store_is_refused(work, capfd):
    (work / "L0.zarr" / "integrity.json").unlink()
    (work / "L0.zarr" / "c" / "3" / "0").unlink()
    with pytest.raises(StoreError, match="no integrity record"):
        store.open_array(work / "L0.zarr")
    store.open_array(work / "L0.zarr", external=True)
    assert "c/3/0" in capfd.readouterr().err


@pytest.mark.parametrize("member", ["data", "indices", "indptr"])
def test_deleted_feature_chunk_is_an_error(work, member):
    files = sorted((work / "f.zarr" / member / "c").rglob("*"))
    next(p for p in files if p.is_file()).unlink()
    with pytest.raises(StoreError, match=re.escape(str(work / "f.zarr")) + f".*{member}/c"):
        CSRStore(str(work / "f.zarr"))


def test_decoder_error_names_the_file_when_unchecked(work):
    """Garbage in a chunk that a sampled check skipped: the Blosc/Zstd error names the store."""
    f = work / "L0.zarr" / "c" / "1" / "0"
    f.write_bytes(os.urandom(f.stat().st_size))
    arr = store.open_array(work / "L0.zarr", check=False)
    with pytest.raises(StoreError, match=re.escape(str(work / "L0.zarr")) + ".*cannot be decoded"):
        np.asarray(arr[256:512])


def test_sampled_check_of_a_large_store(work, monkeypatch):
    """Above FULL_VERIFY_BYTES only a sample of chunks is hashed; sizes and presence always."""
    from universality.core import integrity

    path = work / "L0.zarr"
    integrity.verify(path, full_bytes=0, sample=2)  # intact: passes
    f = path / "c" / "0" / "0"
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(StoreError, match="bytes, its record says"):
        integrity.verify(path, full_bytes=0, sample=0)


def test_sae_weights_with_random_bytes_are_an_error(work):
    f = work / "sae" / WEIGHTS_FILENAME
    b = bytearray(f.read_bytes())
    b[-100:-80] = os.urandom(20)  # the data region: the header still parses
    f.write_bytes(bytes(b))
    with pytest.raises(StoreError, match=re.escape(str(f)) + ".*sha256"):
        SAE.load(work / "sae")


def test_sae_header_too_large_names_the_file(work):
    f = work / "sae" / WEIGHTS_FILENAME
    f.write_bytes(b"\xff" * 64)
    cfg = json.loads((work / "sae" / "cfg.json").read_text())
    del cfg["metadata"]["weights_sha256"]  # a foreign SAELens SAE: no hash to check first
    (work / "sae" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(StoreError, match=re.escape(str(f)) + ".*cannot be decoded.*header"):
        SAE.load(work / "sae")


def test_sae_nan_weights_are_an_error(work):
    import torch
    sae = SAE.load(work / "sae")
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    sae.save(work / "nan")
    with pytest.raises(StoreError, match="W_dec has NaN"):
        SAE.load(work / "nan")


def test_garbage_npz_names_the_file(tmp_path):
    f = tmp_path / "A0_B0.npz"
    f.write_bytes(os.urandom(256))
    with pytest.raises(StoreError, match=re.escape(str(f)) + ".*cannot be decoded"):
        pearson.load_result(f)
    with zipfile.ZipFile(f, "w") as z:  # a pickled object array inside a valid zip
        with z.open("x.npy", "w") as g:
            np.save(g, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StoreError, match=re.escape(str(f)) + ".*Object arrays cannot be loaded"):
        pearson.load_result(f)


def test_features_refuse_nan(work):
    """NaN activations (or weights: SAE.load refuses those) never become a feature store."""
    from universality.sae import features
    data = np.asarray(store.open_array(work / "L0.zarr")[:], dtype=np.float32)
    data[1500, 3] = np.nan
    attrs = dict(store.open_array(work / "L0.zarr").attrs)
    write_acts(work / "nan.zarr", data, attrs=attrs)
    with pytest.raises(ValueError, match="non-finite activations"):
        features.encode(str(work / "sae"), str(work / "nan.zarr"), str(work / "g.zarr"))
    assert not (work / "g.zarr").exists()


def test_token_set_corruption_is_an_error(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": str(i), "split": "eval", "text": f"doc {i} " * 30}) + "\n"
                            for i in range(5)))
    corpus.train_tokenizer(str(docs), 300, str(tmp_path / "tok.json"))
    out = tmp_path / "eval.zarr"
    corpus.tokenize_split(str(docs), str(tmp_path / "tok.json"), "eval", 16, str(out))
    corpus.TokenSet(str(out))
    (out / "offsets" / "c" / "0").unlink()
    with pytest.raises(StoreError, match=re.escape(str(out)) + ".*offsets/c/0"):
        corpus.TokenSet(str(out))


def test_pair_refuses_other_eval_tokens_and_a_null_at_zero(work, tmp_path):
    from universality.sae import features
    rng = np.random.default_rng(1)
    attrs = {"segments": {"sae": [0, 1000], "eval": [1000, 2000]}, "token_sets": {"sae": "aaaa", "eval": "cccc"}}
    write_acts(tmp_path / "other.zarr", (rng.standard_normal((2000, 16)) + 0.5).astype(np.float32), attrs=attrs)
    features.encode(str(work / "sae"), str(tmp_path / "other.zarr"), str(tmp_path / "g.zarr"))
    with pytest.raises(ValueError, match="eval token sets differ.*bbbb.*cccc"):
        mppc.pair(str(work / "f.zarr"), str(tmp_path / "g.zarr"), "sae", 0, str(tmp_path / "p.npz"))
    with pytest.raises(ValueError, match="shift 2000 is a multiple of the 1000"):
        mppc.pair(str(work / "f.zarr"), str(work / "f.zarr"), "sae", 2000, str(tmp_path / "p.npz"))


def test_stale_checkpoint_is_not_resumed(work, tmp_path, capfd):
    """Killed after a checkpoint, then the activations changed upstream: the run starts over."""
    from universality.sae.config import SAETrainConfig

    cfg = SAETrainConfig(expansion=2, l1=0.5, lr=3e-3, batch_size=50, train_tokens=50 * 12, buffer_tokens=200,
                         checkpoint_every=4, log_every=4, lr_decay=0.0, ce_windows=0)

    class Kill(Exception):
        pass

    def kill_at(n):
        def hook(step):
            if step == n:
                raise Kill
        return hook

    acts, out = work / "L0.zarr", tmp_path / "sae"
    with pytest.raises(Kill):
        train_sae(acts, out, cfg, on_step=kill_at(6), progress=False)
    assert [p.name for p in (tmp_path / "sae.ckpt").glob("step_*")] == ["step_000000004"]
    # same inputs: resumed
    capfd.readouterr()
    with pytest.raises(Kill):
        train_sae(acts, out, cfg, on_step=kill_at(7), progress=False)
    assert "resuming from" in capfd.readouterr().err
    # the model changed: new activations (same shape, dtype, attrs) -> start over, and say so
    data = np.asarray(store.open_array(acts)[:], dtype=np.float32)
    attrs = dict(store.open_array(acts).attrs)
    store.remove(acts)
    write_acts(acts, data[::-1].copy() * 1.5, attrs=attrs)
    m = train_sae(acts, out, cfg, progress=False)
    err = capfd.readouterr().err
    assert "starting over" in err and "upstream" in err
    assert m["training"]["resumed_from_step"] == 0
    clean = train_sae(acts, tmp_path / "clean", cfg, progress=False)
    assert (out / WEIGHTS_FILENAME).read_bytes() == (tmp_path / "clean" / WEIGHTS_FILENAME).read_bytes()
    assert clean["config"]["upstream"]["activations"] == store.content_id(acts)


def test_corrupted_checkpoint_is_not_resumed(work, tmp_path, capfd):
    from universality.sae.config import SAETrainConfig
    cfg = SAETrainConfig(expansion=2, batch_size=50, train_tokens=50 * 8, buffer_tokens=200,
                         checkpoint_every=4, lr_decay=0.0, ce_windows=0)

    def hook(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(work / "L0.zarr", tmp_path / "s", cfg, on_step=hook, progress=False)
    st = next((tmp_path / "s.ckpt").glob("step_*")) / "state.safetensors"
    b = bytearray(st.read_bytes())
    b[-8:] = b"\x00" * 8
    st.write_bytes(bytes(b))
    m = train_sae(work / "L0.zarr", tmp_path / "s", cfg, progress=False)
    assert "unreadable" in capfd.readouterr().err and m["training"]["resumed_from_step"] == 0
