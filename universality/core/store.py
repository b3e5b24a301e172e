"""On-disk contracts: atomic writes, chunked Zarr arrays, JSON manifests.

Every output of the pipeline goes through :func:`atomic_output`: it is built at a sibling
temporary path and renamed into place only when complete, so a killed job leaves at most a
``*.tmp-*`` leftover that no rule ever names as an output.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from universality.core.integrity import StoreError, content_id, reading, seal, verify

__all__ = ["StoreError", "atomic_output", "clean_stale_in", "clean_stale_temporaries", "content_id", "create_array",
           "open_array", "open_group", "read_json", "reading", "seal", "verify", "write_csv_gz", "write_json"]

#: Write every chunk, empty ones too, so that a missing chunk file is always a lost chunk.
ARRAY_CONFIG = {"write_empty_chunks": True}

#: Chunk length along tokens for activation and token arrays (rows per chunk).
DEFAULT_CHUNK_ROWS = 4096


def remove(path: str | os.PathLike) -> None:
    """Delete a file or directory if it exists."""
    _remove(Path(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, *, sealed: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``final`` only if the block succeeds.

    Works for files and directories (Zarr stores, ``save_pretrained`` folders). The temporary
    name carries the PID so two crashed attempts never collide. ``sealed``: write the directory's
    integrity record (:func:`universality.core.integrity.seal`) before the rename.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_output: nothing was written to {tmp} for {final}")
        if sealed:
            seal(tmp)
        _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"expected JSON file is missing: {path}")
    with reading(path):
        return json.loads(path.read_text())


_TMP = re.compile(r"^(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Remove ``<final>.tmp-<PID>`` siblings left by killed writes whose PID is no longer alive
    (a live PID may be another job writing now). Returns what was removed."""
    final = Path(final)
    return clean_stale_in(final.parent, final.name)


def clean_stale_in(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the ``*.tmp-<PID>`` entries of ``directory`` (of ``name`` only, if given) whose
    PID is not alive."""
    directory, removed = Path(directory), []
    if not directory.is_dir():
        return removed
    for sib in sorted(directory.iterdir()):
        m = _TMP.match(sib.name)
        if m and (name is None or m["name"] == name) and not _pid_alive(int(m["pid"])):
            _remove(sib)
            removed.append(sib)
    return removed


def write_csv_gz(path: str | os.PathLike, table) -> None:
    """A pandas table as ``.csv.gz``, atomically and byte-reproducibly (gzip header: mtime 0, no
    file name), so the same table always gives the same bytes."""
    data = table.to_csv(index=False).encode()
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            gz.write(data)


def compressor(clevel: int = 3) -> BloscCodec:
    """Blosc/Zstd with bit-shuffle: a good ratio on float16 activations at low CPU cost."""
    return BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")


def create_array(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: str,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    attrs: dict | None = None,
) -> zarr.Array:
    """Create a chunked, compressed Zarr v3 array chunked along axis 0 only.

    Rows are the streaming axis (tokens); every other axis stays whole in a chunk so that a
    reader gets complete vectors from one chunk.
    """
    chunks = (max(1, min(chunk_rows, shape[0] or 1)),) + tuple(shape[1:])
    return zarr.create_array(
        str(path),
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=compressor(),
        attributes=attrs or {},
        overwrite=True,
        config=ARRAY_CONFIG,
    )


class CheckedArray:
    """A read-only Zarr array whose reads name the store on a decoder error (attributes of the
    underlying ``zarr.Array`` pass through: shape, dtype, chunks, attrs, ...)."""

    def __init__(self, array: zarr.Array, path: Path):
        self._array, self.path = array, path

    def __getattr__(self, name: str):
        return getattr(self._array, name)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, key):
        with reading(self.path):
            return self._array[key]


def open_array(path: str | os.PathLike, *, check: bool = True, external: bool = False) -> CheckedArray:
    """Open a Zarr array for reading after :func:`verify` (``check``; ``external``: an outside
    input, which may have no integrity record); reads name ``path`` on a decoder error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Zarr array not found: {path}")
    if check:
        verify(path, external=external)
    with reading(path):
        return CheckedArray(zarr.open_array(str(path), mode="r"), path)


def open_group(path: str | os.PathLike, *, check: bool = True, external: bool = False) -> zarr.Group:
    """Open a Zarr group for reading after :func:`verify` (``check``, ``external``: see
    :func:`open_array`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Zarr group not found: {path}")
    if check:
        verify(path, external=external)
    with reading(path):
        return zarr.open_group(str(path), mode="r")


def read_member(group: zarr.Group, name: str, path: str | os.PathLike) -> np.ndarray:
    """All of array ``name`` of ``group`` (the store at ``path``); errors name the store."""
    with reading(path):
        if name not in group:
            raise StoreError(f"{path}: has no array {name!r}")
        return np.asarray(group[name][:])


class RowWriter:
    """Append rows to a pre-sized Zarr array in whole chunks (one writer, no partial rewrites).

    Rows are buffered until a chunk is full, so each chunk is compressed and written once.
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self.rows = array.chunks[0]
        self.pos = 0
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    def append(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.array.shape[1:]:
            raise ValueError(f"row shape {block.shape[1:]} does not match array {self.array.shape[1:]}")
        self._buf.append(np.asarray(block, dtype=self.array.dtype))
        self._buffered += len(block)
        while self._buffered >= self.rows:
            data = np.concatenate(self._buf)
            self._write(data[: self.rows])
            rest = data[self.rows :]
            self._buf = [rest] if len(rest) else []
            self._buffered = len(rest)

    def _write(self, data: np.ndarray) -> None:
        end = self.pos + len(data)
        if end > self.array.shape[0]:
            raise ValueError(f"too many rows: {end} > {self.array.shape[0]}")
        self.array[self.pos : end] = data
        self.pos = end

    def close(self) -> None:
        if self._buf:
            self._write(np.concatenate(self._buf))
            self._buf, self._buffered = [], 0
        if self.pos != self.array.shape[0]:
            raise ValueError(f"wrote {self.pos} rows, array expects {self.array.shape[0]}")


def iter_rows(array: zarr.Array, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, block)`` over axis 0, one chunk (or ``block_rows``) at a time."""
    step = block_rows or array.chunks[0]
    for start in range(0, array.shape[0], step):
        yield start, np.asarray(array[start : start + step])


def file_sha256(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def array_manifest(path: str | os.PathLike) -> dict:
    """Shape, dtype, chunking, attrs and a content hash of a Zarr array (the lineage record)."""
    arr = open_array(path)
    h = hashlib.sha256()
    for _, block in iter_rows(arr):
        h.update(np.ascontiguousarray(block).tobytes())
    return {
        "path": str(path),
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "nchunks": int(arr.nchunks),
        "attrs": dict(arr.attrs),
        "sha256": h.hexdigest()[:16],
        "integrity": content_id(path),
    }
