"""Integrity records of stores on disk, checked on every read; decoder errors that name the file.

A store (a Zarr array or group, any output directory) is *sealed* when written: ``integrity.json``
inside it lists every file below it with its size and the sha256 of its stored bytes (chunks are
hashed compressed, so checking them costs a read, not a decompression). :func:`verify` compares
the directory with its record before a reader trusts it:

- always: the set of files (a lost chunk would read as the fill value, zeros, in zarr 3; an
  extra one as data that was never written), every file's size, and the hash of every metadata
  file (``zarr.json``: shapes, dtypes, chunking, attrs);
- the hash of every chunk file when the store holds at most :data:`FULL_VERIFY_BYTES`, else of
  :data:`SAMPLE_FILES` chunk files drawn at random per read (each read checks other chunks; a
  swapped chunk of another size is caught by its size on every read).

Measured on this machine (2 shared cores, another pipeline running): a default-sized activation
store, 196,608 x 128 float16 (50 MB raw, 47 MB on disk in 48 chunks of Gaussian data), seals in
~0.12 s and verifies fully in ~0.15 s (sampled, 16 chunks: ~0.05 s), against ~0.19 s to decode
it once; the SAE trainer reads it many times over, so the full check costs well under 1% of a
train_sae job.

A file above :data:`BLOCK_BYTES` (a model's ``model.safetensors``) also has the sha256 of each
of its blocks in the record, so that a sampled check of a large folder hashes blocks, not whole
files. Measured (``benchmarks/model_integrity.py``, 2 cores shared with other jobs): a
Pythia-160m-sized GPT-NeoX folder (649 MB float32) seals in ~4 s (once, when written), checks
fully in ~1.5 s and sampled (16 blocks of 8 MiB: it is above FULL_VERIFY_BYTES) in ~0.75 s, about
11% of a ``load_model`` of ~7 s that includes it. A toy model (under 1 MB) is always hashed fully.

A store without a record is refused (:class:`StoreError` naming it): every store the pipeline
writes is sealed, so a missing record means a store written by hand, by another tool, by an
older version, or a deleted record, and its content cannot be checked. A reader of an outside
input passes ``external=True`` and gets the structural check only: a chunk of an array's grid
that is absent is reported on stderr (zarr's default skips all-fill chunks, so absence is not
proof of loss there; our writers write empty chunks too and always seal). A store made by hand
is sealed with ``python -m universality.core.integrity seal PATH``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Iterator

#: Name of the record inside a sealed directory.
RECORD = "integrity.json"
#: Stores up to this many stored bytes have every chunk hashed on read.
FULL_VERIFY_BYTES = 512 << 20
#: Chunk files (or blocks of large files) hashed per read of a larger store.
SAMPLE_FILES = 16
#: Files above this size have per-block hashes in the record (a sampled check hashes blocks).
BLOCK_BYTES = 8 << 20
_FORMAT = 1


class StoreError(ValueError):
    """A file on disk is missing, corrupt or not what its record says; the message names it."""


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    return _hashes(path, 0)[0]


def _hashes(path: Path, block_bytes: int) -> tuple[str, list[str]]:
    """(sha256 of the whole file, sha256 of each ``block_bytes`` block; [] if ``block_bytes`` is 0
    or the file is not larger), in one read."""
    whole, blocks, part, filled = hashlib.sha256(), [], hashlib.sha256(), 0
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            whole.update(piece)
            if block_bytes:
                part.update(piece)
                filled += len(piece)
                if filled >= block_bytes:  # BLOCK_BYTES is a multiple of the 1 MiB read
                    blocks.append(part.hexdigest())
                    part, filled = hashlib.sha256(), 0
    if filled:
        blocks.append(part.hexdigest())
    return whole.hexdigest(), (blocks if len(blocks) > 1 else [])


def _block_sha256(path: Path, index: int, block_bytes: int = BLOCK_BYTES) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(index * block_bytes)
        left = block_bytes
        while left:
            piece = f.read(min(1 << 20, left))
            if not piece:
                break
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            # Snakemake's marker in directory() outputs is not content
            if rel != RECORD and not name.startswith(".snakemake"):
                out.append(rel)
    return out


def _is_metadata(rel: str) -> bool:
    # zarr metadata, SAE cfg.json, a model's config.json / tokenizer files: small, always hashed
    return rel.endswith(".json") or rel.rsplit("/", 1)[-1] in (".zarray", ".zgroup", ".zattrs")


def seal(path: str | os.PathLike) -> dict:
    """Write ``path/integrity.json``: ``{"files": {relpath: [size, sha256]}}`` of every file below
    ``path``, and ``{"blocks": {relpath: [sha256 of each BLOCK_BYTES block]}}`` of the files above
    BLOCK_BYTES (sorted, no timestamps: the record is byte-reproducible). Returns the record."""
    root = Path(path)
    files, blocks = {}, {}
    for rel in _files(root):
        whole, parts = _hashes(root / rel, BLOCK_BYTES)
        files[rel] = [(root / rel).stat().st_size, whole]
        if parts:
            blocks[rel] = parts
    record = {"format": _FORMAT, "files": files}
    if blocks:
        record["block_bytes"], record["blocks"] = BLOCK_BYTES, blocks
    (root / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def read_record(path: str | os.PathLike) -> dict | None:
    """The integrity record of ``path``, None if it has none; StoreError if it is unreadable."""
    rec = Path(path) / RECORD
    if not rec.exists():
        return None
    try:
        record = json.loads(rec.read_text())
        if not isinstance(record.get("files"), dict):
            raise ValueError("no 'files' table")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise StoreError(f"{rec}: integrity record is corrupt ({e}); rerun the rule that writes {path}") from None
    return record


def content_id(path: str | os.PathLike) -> str:
    """A short identity of a store's content: the hash of its record (or, unsealed, of every file)."""
    root = Path(path)
    h = hashlib.sha256()
    record = read_record(root)
    if record is not None:
        h.update(json.dumps(record["files"], sort_keys=True).encode())
    else:
        for rel in _files(root):
            h.update(rel.encode() + b"\0" + file_sha256(root / rel).encode())
    return h.hexdigest()[:16]


def _fail(root: Path, what: str) -> StoreError:
    return StoreError(f"{root}: {what}; the store is corrupt or incomplete: delete it and rerun the rule "
                      "that writes it")


def verify(path: str | os.PathLike, *, full_bytes: int = FULL_VERIFY_BYTES, sample: int = SAMPLE_FILES,
           external: bool = False) -> None:
    """Check the store ``path`` against its record (module docstring); raise StoreError naming
    the store and the file at fault. ``external``: an outside input, for which a missing record
    is allowed (structural check only); otherwise a missing record is an error."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"store not found: {root}")
    record = read_record(root)
    if record is None:
        if external:
            return _verify_structure(root)
        raise StoreError(f"{root}: has no integrity record ({RECORD}), so its content cannot be checked; every "
                         "store and model folder the pipeline writes is sealed: delete it and rerun the rule "
                         "that writes it (a store made by hand: `python -m universality.core.integrity seal "
                         f"{root}`)")
    want = record["files"]
    have = set(_files(root))
    missing = sorted(set(want) - have)
    if missing:
        kind = "chunk" if not _is_metadata(missing[0]) else "metadata file"
        raise _fail(root, f"{len(missing)} file(s) missing, first {kind} {missing[0]!r} (a missing chunk "
                          "would read as zeros)")
    extra = sorted(have - set(want))
    if extra:
        raise _fail(root, f"{len(extra)} file(s) not in its integrity record, first {extra[0]!r}")
    for rel, (size, _) in want.items():
        got = (root / rel).stat().st_size
        if got != size:
            raise _fail(root, f"{rel!r} has {got} bytes, its record says {size}")
    chunks = [rel for rel in want if not _is_metadata(rel)]
    check = [rel for rel in want if _is_metadata(rel)]
    blocks = record.get("blocks") or {}
    units: list[tuple[str, int]] = []  # (file, block index) of the sampled check
    if sum(want[r][0] for r in chunks) <= full_bytes:
        check += chunks
    else:
        pool = [(rel, i) for rel in chunks for i in range(len(blocks.get(rel, [])) or 1)]
        for rel, i in random.sample(pool, min(sample, len(pool))):
            (units.append((rel, i)) if rel in blocks else check.append(rel))
    for rel in check:
        if file_sha256(root / rel) != want[rel][1]:
            raise _fail(root, f"{rel!r} does not match the sha256 in its integrity record (changed or replaced)")
    for rel, i in units:
        if _block_sha256(root / rel, i, record["block_bytes"]) != blocks[rel][i]:
            raise _fail(root, f"{rel!r} block {i} (from byte {i * record['block_bytes']}) does not match the sha256 in its "
                              "integrity record (changed or replaced)")


def _verify_structure(root: Path) -> None:
    """Unsealed store: every Zarr v3 array below ``root`` has every chunk of its grid on disk."""
    for meta in sorted(root.rglob("zarr.json")):
        try:
            m = json.loads(meta.read_text())
        except ValueError as e:
            raise _fail(root, f"{meta.relative_to(root)} is not valid JSON ({e})") from None
        if m.get("node_type") != "array":
            continue
        shape = m["shape"]
        chunks = m["chunk_grid"]["configuration"]["chunk_shape"]
        grid = [-(-s // c) if s else 0 for s, c in zip(shape, chunks)]
        sep = m.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
        base = meta.parent
        n = 1
        for g in grid:
            n *= g
        if n == 0:
            continue
        idx = [0] * len(grid)
        for _ in range(n):
            key = "c" + sep + sep.join(map(str, idx)) if idx else "c"
            if not (base / key).exists():
                print(f"warning: {root} has no integrity record and chunk {str((base / key).relative_to(root))!r} "
                      f"of a {shape} array is absent: it reads as the fill value (lost, or never written "
                      "because empty)", file=sys.stderr)
                return
            for d in reversed(range(len(idx))):
                idx[d] += 1
                if idx[d] < grid[d]:
                    break
                idx[d] = 0


#: Exceptions raised by the decoders we read with (Zarr / numcodecs Blosc-Zstd, safetensors,
#: NumPy .npz / zip, JSON): re-raised as StoreError naming the file.
_DECODER_ERRORS = (ValueError, KeyError, RuntimeError, OSError, EOFError, TypeError, IndexError)


def _decoder_error(e: BaseException) -> bool:
    if isinstance(e, _DECODER_ERRORS):
        return True
    # safetensors' SafetensorError, zipfile.BadZipFile, numcodecs / Blosc errors
    return type(e).__module__.split(".")[0] in ("safetensors", "zipfile", "numcodecs", "zarr", "blosc")


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a decoder error inside the block as StoreError naming ``path`` (missing files
    and StoreErrors pass through unchanged)."""
    try:
        yield
    except (StoreError, FileNotFoundError):
        raise
    except Exception as e:
        if not _decoder_error(e):
            raise
        raise StoreError(f"{path}: cannot be decoded ({type(e).__name__}: {e}); the file is corrupt or "
                         "truncated: delete it and rerun the rule that writes it") from e


def main(argv: list[str]) -> int:
    """``python -m universality.core.integrity seal|verify PATH...``: seal a store made by hand,
    or check one."""
    if len(argv) < 2 or argv[0] not in ("seal", "verify"):
        print("usage: python -m universality.core.integrity seal|verify PATH...", file=sys.stderr)
        return 2
    for p in argv[1:]:
        if argv[0] == "seal":
            print(f"{p}: sealed, {len(seal(p)['files'])} files")
        else:
            verify(p, full_bytes=1 << 62)
            print(f"{p}: intact")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
