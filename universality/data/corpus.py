"""Corpus, tokenizer and token sets.

Documents come from the running Python's standard library (the default: every Python
installation has it), a glob of local text files, a JSONL file or a Hugging Face dataset in the
local ``datasets`` cache. Each document is assigned to ``train`` or ``eval`` by a seeded hash of
its id (a split by document, stable when other documents change). Token sets store windows of
at most ``max_len`` tokens, each starting with BOS: ``documents="split"`` (the default) cuts every
document into consecutive windows (all of its text is used: the toy corpus is small);
``"truncate"`` keeps one window per document, its first ``max_len - 1`` tokens after one BOS (the
paper's App. A.1: "We truncate each document to 1024 tokens and prepend a <bos> token").
"""
from __future__ import annotations

import glob as globmod
import hashlib
import json
import platform
import sysconfig
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr

from universality.core import store

BOS_TOKEN = "<|endoftext|>"
#: Folder names whose files are test code, not library code (excluded from the stdlib corpus).
_TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, tests and site-packages excluded, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = set(rel.parts[:-1])
        if "site-packages" in parts or "dist-packages" in parts or parts & _TEST_DIRS:
            continue
        if rel.name.startswith("test_"):
            continue
        out.append(path)
    return out


def iter_documents(corpus: dict) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` for the configured source, in a deterministic order."""
    source = corpus["source"]
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in stdlib_files():
            yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace")
    elif source == "glob":
        for name in sorted(globmod.glob(corpus["path"], recursive=True)):
            if Path(name).is_file():
                yield name, Path(name).read_text(encoding="utf-8", errors="replace")
    elif source == "jsonl":
        field = corpus["text_field"]
        with open(corpus["path"], encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{corpus['path']}:{i + 1}: not valid JSON ({e.msg})") from None
                if field not in row:
                    raise KeyError(f"{corpus['path']}:{i + 1}: no field {field!r} (corpus.text_field)")
                yield str(row.get("id", i)), str(row[field])
    elif source == "hf":
        yield from _iter_hf(corpus)
    else:
        raise ValueError(f"corpus.source: unknown source {source!r}")


def _iter_hf(corpus: dict) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError:
        raise ImportError("corpus.source 'hf' needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(corpus["path"], split=corpus["hf_split"], download_mode="reuse_dataset_if_exists")
    except Exception as e:
        raise FileNotFoundError(
            f"corpus.path: dataset {corpus['path']!r} is not in the local datasets cache ({e}); on a "
            f"connected machine run: huggingface-cli download --repo-type dataset {corpus['path']}"
        ) from None
    for i, row in enumerate(ds):
        yield str(i), str(row[corpus["text_field"]])


def _split_u(doc_id: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_of(doc_id: str, seed: int, eval_fraction: float) -> str:
    """``eval`` for a seeded-hash share ``eval_fraction`` of document ids, else ``train``."""
    return "eval" if _split_u(doc_id, seed) < eval_fraction else "train"


def _fill_empty_split(path: Path, counts: Counter, seed: int) -> str | None:
    """A small corpus whose hash split left one side empty: move the document nearest to the
    threshold (the smallest hash to ``eval``, the largest to ``train``) and rewrite ``path``.
    Returns the moved document's id (None if nothing moved)."""
    if sum(counts.values()) < 2 or (counts["eval"] and counts["train"]):
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    empty = "eval" if not counts["eval"] else "train"
    pick = (min if empty == "eval" else max)(rows, key=lambda r: _split_u(r["id"], seed))
    pick["split"] = empty
    counts[empty] += 1
    counts["train" if empty == "eval" else "eval"] -= 1
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return pick["id"]


def write_documents(corpus: dict, out_jsonl: str, out_manifest: str) -> dict:
    """Write ``documents.jsonl`` (id, split, text) and a manifest with a content hash."""
    counts = Counter()
    chars = 0
    moved = None
    with store.atomic_output(out_jsonl) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc_id, text in iter_documents(corpus):
                if corpus["max_documents"] and sum(counts.values()) >= corpus["max_documents"]:
                    break
                if not text.strip():
                    continue
                split = split_of(doc_id, corpus["seed"], corpus["eval_fraction"])
                f.write(json.dumps({"id": doc_id, "split": split, "text": text}, ensure_ascii=False) + "\n")
                counts[split] += 1
                chars += len(text)
        moved = _fill_empty_split(tmp, counts, corpus["seed"])
        h = hashlib.sha256()
        with open(tmp, encoding="utf-8") as f:
            for line in f:
                h.update(line.rstrip("\n").encode())
    if not counts:
        store._remove(Path(out_jsonl))
        raise ValueError(f"corpus: source {corpus['source']!r} (path {corpus['path']!r}) gave no documents")
    for split in ("train", "eval"):
        if not counts[split]:
            store._remove(Path(out_jsonl))
            raise ValueError(
                f"corpus: no {split} documents among {sum(counts.values())}; "
                "raise corpus.max_documents or change corpus.eval_fraction"
            )
    manifest = {
        "source": corpus["source"],
        "path": corpus["path"],
        "python_version": platform.python_version(),
        "documents": dict(counts),
        "characters": chars,
        "sha256": h.hexdigest()[:16],
    }
    if moved is not None:
        manifest["split_fallback"] = f"the hash split left a split empty: document {moved!r} moved to it"
    store.write_json(out_manifest, manifest)
    return manifest


def read_documents(path: str, split: str | None = None) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if split is None or row["split"] == split:
                yield row


def train_tokenizer(documents: str, vocab_size: int, out: str) -> None:
    """Train a byte-level BPE on the train split; ``<|endoftext|>`` is id 0 (BOS and EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d["text"] for d in read_documents(documents, "train")), trainer=trainer)
    with store.atomic_output(out) as tmp:
        tok.save(str(tmp))


def hub_tokenizer(hub_model: str, out: str) -> None:
    """Save the tokenizer of a local/cached hub model as ``tokenizer.json`` (no download)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hub_model, local_files_only=True)
    with store.atomic_output(out) as tmp:
        tok.backend_tokenizer.save(str(tmp))


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def bos_id(tokenizer) -> int:
    tid = tokenizer.token_to_id(BOS_TOKEN)
    if tid is None:
        raise KeyError(f"tokenizer has no {BOS_TOKEN!r} token to use as BOS")
    return tid


#: Document handling of :func:`windows` (the ``tokenizer.documents`` key).
DOCUMENT_MODES = ("split", "truncate")


def windows(ids: list[int], max_len: int, bos: int, documents: str = "split") -> Iterator[list[int]]:
    """One document's ids as windows of ``[BOS] + <= max_len-1`` tokens: all of them, consecutive
    (``documents="split"``), or only the first (``"truncate"``). An empty document gives none."""
    if documents not in DOCUMENT_MODES:
        raise ValueError(f"tokenizer.documents must be one of {DOCUMENT_MODES}, got {documents!r}")
    step = max_len - 1
    if documents == "truncate":
        if ids:
            yield [bos] + list(ids[:step])
        return
    for start in range(0, len(ids), step):
        piece = ids[start : start + step]
        if piece:
            yield [bos] + piece


def tokenize_split(documents: str, tokenizer_path: str, split: str, max_len: int, out: str,
                   mode: str = "split") -> dict:
    """Write token set ``out`` (a Zarr group): ``ids`` int32 [tokens], ``offsets`` int64 [windows+1].

    Window ``w`` is ``ids[offsets[w]:offsets[w+1]]`` and starts with BOS; ``mode`` is the
    document handling of :func:`windows` (recorded in the attrs as ``documents_mode`` unless it is
    the default, so the default's token sets are unchanged).
    """
    tok = load_tokenizer(tokenizer_path)
    bos = bos_id(tok)
    docs = list(read_documents(documents, split))
    encoded = tok.encode_batch([d["text"] for d in docs], add_special_tokens=False)
    ids, offsets = [], [0]
    for enc in encoded:
        for w in windows(enc.ids, max_len, bos, mode):
            ids.extend(w)
            offsets.append(offsets[-1] + len(w))
    if len(offsets) < 2:
        raise ValueError(f"token set {split!r} is empty: the {split} documents tokenised to nothing")
    ids_arr = np.asarray(ids, dtype=np.int32)
    attrs = {
        "split": split,
        "max_len": max_len,
        "bos_id": bos,
        "vocab_size": tok.get_vocab_size(),
        "documents": len(docs),
        "windows": len(offsets) - 1,
        "tokens": int(len(ids_arr)),
        # tokens that activations can store (BOS positions are never scored)
        "scored_tokens": int((ids_arr != bos).sum()),
        # BOS is inserted by us, not predicted text
        "unigram_entropy_nats": unigram_entropy(ids_arr, tok.get_vocab_size(), exclude=bos),
        "sha256": hashlib.sha256(ids_arr.tobytes()).hexdigest()[:16],
    }
    if mode != "split":
        attrs["documents_mode"] = mode
    with store.atomic_output(out, sealed=True) as tmp:
        group = zarr.open_group(str(tmp), mode="w", attributes=attrs)
        group.create_array("ids", data=ids_arr, chunks=(1 << 20,), compressors=store.compressor(),
                           config=store.ARRAY_CONFIG)
        group.create_array("offsets", data=np.asarray(offsets, dtype=np.int64), chunks=(1 << 16,),
                           config=store.ARRAY_CONFIG)
    return attrs


class TokenSet:
    """Read access to a token set written by :func:`tokenize_split`."""

    def __init__(self, path: str):
        if not Path(path).exists():
            raise FileNotFoundError(f"token set not found: {path}")
        group = store.open_group(path)  # verified against its integrity record
        self.path = str(path)
        self.attrs = dict(group.attrs)
        self.ids = store.read_member(group, "ids", path)
        self.offsets = store.read_member(group, "offsets", path)
        if "bos_id" not in self.attrs:
            raise store.StoreError(f"{path}: token set has no 'bos_id' attribute")
        self.bos_id = int(self.attrs["bos_id"])
        n = len(self.ids)
        if (len(self.offsets) < 1 or self.offsets[0] != 0 or self.offsets[-1] != n
                or (np.diff(self.offsets) < 0).any()):
            raise store.StoreError(f"{path}: offsets do not index the {n} ids (corrupt token set)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def window(self, w: int) -> np.ndarray:
        return self.ids[self.offsets[w] : self.offsets[w + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, windows, length: int) -> np.ndarray:
        """Windows as [len(windows), length] int64 ids, right-padded with BOS (causal: harmless)."""
        ids = np.full((len(windows), length), self.bos_id, dtype=np.int64)
        for i, w in enumerate(windows):
            win = self.window(int(w))
            ids[i, : len(win)] = win
        return ids


def check_budget(attrs: dict, budget: dict[str, int]) -> None:
    """Raise ValueError if the token set (``attrs`` of :func:`tokenize_split`) has fewer scored
    tokens than any ``{config key: tokens}`` of ``budget`` asks for; the message names the numbers
    and the keys to change. Run by the token_budget rule, before any model is trained."""
    have = int(attrs["scored_tokens"])
    short = {k: n for k, n in budget.items() if n > have}
    if short:
        asks = ", ".join(f"{k} = {n}" for k, n in short.items())
        raise ValueError(
            f"token set {attrs['split']!r} has only {have} scored tokens ({attrs['documents']} documents), "
            f"but {asks}: lower {' / '.join(short)} to at most {have}, or use a larger corpus "
            f"(corpus.path, corpus.max_documents; corpus.eval_fraction moves documents between the splits)")


def unigram_entropy(ids: np.ndarray, vocab_size: int, exclude: int | None = None) -> float:
    """Entropy in nats of the token frequency distribution (the loss of a unigram model)."""
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    if exclude is not None:
        counts[exclude] = 0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = [
    "BOS_TOKEN", "TokenSet", "bos_id", "hub_tokenizer", "iter_documents", "load_tokenizer",
    "check_budget", "read_documents", "split_of", "stdlib_files", "tokenize_split", "train_tokenizer",
    "unigram_entropy", "windows", "write_documents",
]
