import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from universality.data import corpus

CFG = {"source": "jsonl", "path": None, "text_field": "text", "hf_split": "train",
       "max_documents": None, "eval_fraction": 0.3, "seed": 0}


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_stdlib_files_exclude_tests_and_are_sorted():
    files = corpus.stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = [f.relative_to(root) for f in files]
    assert len(files) > 300 and files == sorted(files)
    assert not any({"test", "tests", "site-packages"} & set(r.parts[:-1]) for r in rels)
    assert not any(r.name.startswith("test_") for r in rels)
    assert Path("json/decoder.py") in rels


def test_split_is_by_document_and_seeded():
    ids = [f"doc{i}" for i in range(2000)]
    a = [corpus.split_of(i, 0, 0.1) for i in ids]
    assert a == [corpus.split_of(i, 0, 0.1) for i in ids]
    assert 0.07 < a.count("eval") / len(a) < 0.13
    assert a != [corpus.split_of(i, 1, 0.1) for i in ids]


def test_windows_match_reference():
    ids = list(range(100, 123))  # 23 tokens
    got = list(corpus.windows(ids, 8, bos=0))
    # slow reference: consecutive pieces of max_len - 1 tokens, each after BOS
    ref, i = [], 0
    while i < len(ids):
        ref.append([0] + ids[i : i + 7])
        i += 7
    assert got == ref and all(len(w) <= 8 for w in got)


def test_documents_tokenizer_tokens(tmp_path):
    texts = [f"def f{i}(x):\n    return x * {i} + {i ** 2}\n" * (1 + i % 5) for i in range(60)]
    cfg = dict(CFG, path=write_jsonl(tmp_path / "c.jsonl", texts))
    docs, man = tmp_path / "documents.jsonl", tmp_path / "manifest.json"
    info = corpus.write_documents(cfg, str(docs), str(man))
    assert info["documents"]["train"] + info["documents"]["eval"] == 60
    assert info["sha256"] == json.loads(man.read_text())["sha256"]
    corpus.train_tokenizer(str(docs), 300, str(tmp_path / "tok.json"))
    corpus.train_tokenizer(str(docs), 300, str(tmp_path / "tok2.json"))
    assert (tmp_path / "tok.json").read_bytes() == (tmp_path / "tok2.json").read_bytes()
    tok = corpus.load_tokenizer(tmp_path / "tok.json")
    assert corpus.bos_id(tok) == 0 and tok.get_vocab_size() <= 300
    attrs = corpus.tokenize_split(str(docs), str(tmp_path / "tok.json"), "eval", 16, str(tmp_path / "eval.zarr"))
    ts = corpus.TokenSet(str(tmp_path / "eval.zarr"))
    assert len(ts) == attrs["windows"] and ts.offsets[-1] == len(ts.ids) == attrs["tokens"]
    assert all(ts.window(w)[0] == 0 and len(ts.window(w)) <= 16 for w in range(len(ts)))
    # the windows of a document concatenate back to its encoding
    eval_docs = [d["text"] for d in corpus.read_documents(str(docs), "eval")]
    joined = np.concatenate([ts.window(w)[1:] for w in range(len(ts))])
    expected = np.concatenate([tok.encode(t, add_special_tokens=False).ids for t in eval_docs])
    np.testing.assert_array_equal(joined, expected)


def test_unigram_entropy_reference():
    ids = np.array([1, 1, 2, 3, 3, 3, 0])
    p = np.array([2, 1, 3]) / 6
    assert corpus.unigram_entropy(ids, 5, exclude=0) == pytest.approx(-(p * np.log(p)).sum())


def test_empty_corpus_is_a_clear_error(tmp_path):
    cfg = dict(CFG, path=write_jsonl(tmp_path / "c.jsonl", ["  ", "\n"]))
    with pytest.raises(ValueError, match="gave no documents"):
        corpus.write_documents(cfg, str(tmp_path / "d.jsonl"), str(tmp_path / "m.json"))
    assert not (tmp_path / "d.jsonl").exists()


def test_bad_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a"}\n{"txt": "b"}\n')
    cfg = dict(CFG, path=str(p))
    with pytest.raises(KeyError, match=r"c\.jsonl:2: no field 'text'"):
        corpus.write_documents(cfg, str(tmp_path / "d.jsonl"), str(tmp_path / "m.json"))


def test_truncate_keeps_one_window_per_document_with_one_bos():
    ids = list(range(100, 123))  # 23 tokens
    assert list(corpus.windows(ids, 8, bos=0, documents="truncate")) == [[0] + ids[:7]]
    assert list(corpus.windows(ids[:3], 8, bos=0, documents="truncate")) == [[0] + ids[:3]]
    assert list(corpus.windows([], 8, bos=0, documents="truncate")) == []
    assert list(corpus.windows(ids, 8, bos=0, documents="split")) == list(corpus.windows(ids, 8, bos=0))
    with pytest.raises(ValueError, match="tokenizer.documents"):
        list(corpus.windows(ids, 8, bos=0, documents="chop"))


def test_truncated_token_set_has_one_window_per_document(tmp_path):
    texts = [f"def f{i}(x):\n    return x * {i} + {i ** 2}\n" * (1 + i % 5) for i in range(60)]
    cfg = dict(CFG, path=write_jsonl(tmp_path / "c.jsonl", texts))
    docs = tmp_path / "documents.jsonl"
    corpus.write_documents(cfg, str(docs), str(tmp_path / "manifest.json"))
    corpus.train_tokenizer(str(docs), 300, str(tmp_path / "tok.json"))
    tok = corpus.load_tokenizer(tmp_path / "tok.json")
    split = corpus.tokenize_split(str(docs), str(tmp_path / "tok.json"), "train", 16, str(tmp_path / "s.zarr"))
    trunc = corpus.tokenize_split(str(docs), str(tmp_path / "tok.json"), "train", 16, str(tmp_path / "t.zarr"),
                                  mode="truncate")
    assert "documents_mode" not in split and trunc["documents_mode"] == "truncate"
    train_docs = [d["text"] for d in corpus.read_documents(str(docs), "train")]
    ts = corpus.TokenSet(str(tmp_path / "t.zarr"))
    assert len(ts) == trunc["documents"] == len(train_docs) < split["windows"]
    for w, text in enumerate(train_docs):
        win, enc = ts.window(w), tok.encode(text, add_special_tokens=False).ids
        assert win[0] == 0 and (win == 0).sum() == 1  # one BOS, first
        np.testing.assert_array_equal(win[1:], enc[:15])  # the document's first max_len - 1 tokens
