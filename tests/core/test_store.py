import numpy as np
import pytest

from universality.core import store


def test_atomic_output_renames_only_on_success(tmp_path):
    final = tmp_path / "out.txt"
    with store.atomic_output(final) as tmp:
        tmp.write_text("done")
        assert not final.exists()
    assert final.read_text() == "done"
    with pytest.raises(RuntimeError):
        with store.atomic_output(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert final.read_text() == "done"  # the old complete output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no leftover


def test_atomic_output_directory(tmp_path):
    final = tmp_path / "a.zarr"
    with pytest.raises(ValueError):
        with store.atomic_output(final) as tmp:
            arr = store.create_array(tmp, (10, 3), "float32", chunk_rows=4)
            arr[:4] = 1
            raise ValueError("interrupted")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_row_writer_streams_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(103, 5)).astype(np.float32)
    arr = store.create_array(tmp_path / "x.zarr", data.shape, "float32", chunk_rows=16, attrs={"k": 1})
    w = store.RowWriter(arr)
    i = 0
    for n in [1, 7, 30, 2, 50, 13]:  # arbitrary block sizes across chunk borders
        w.append(data[i : i + n])
        i += n
    w.close()
    store.seal(tmp_path / "x.zarr")  # readers refuse an unsealed store
    back = store.open_array(tmp_path / "x.zarr")
    np.testing.assert_array_equal(back[:], data)
    assert back.chunks == (16, 5) and dict(back.attrs) == {"k": 1}
    assert np.concatenate([b for _, b in store.iter_rows(back)]).shape == data.shape


def test_row_writer_rejects_wrong_count(tmp_path):
    arr = store.create_array(tmp_path / "x.zarr", (10, 2), "float32", chunk_rows=4)
    w = store.RowWriter(arr)
    w.append(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="wrote 3 rows, array expects 10"):
        w.close()


def test_manifest_hash_tracks_content(tmp_path):
    for name, val in [("a", 1.0), ("b", 1.0), ("c", 2.0)]:
        arr = store.create_array(tmp_path / f"{name}.zarr", (8, 2), "float16", chunk_rows=4)
        arr[:] = val
        store.seal(tmp_path / f"{name}.zarr")
    m = {n: store.array_manifest(tmp_path / f"{n}.zarr") for n in "abc"}
    assert m["a"]["sha256"] == m["b"]["sha256"] != m["c"]["sha256"]
    assert m["a"]["shape"] == [8, 2] and m["a"]["nchunks"] == 2


def test_missing_inputs_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zarr"):
        store.open_array(tmp_path / "nothing.zarr")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        store.read_json(tmp_path / "nothing.json")
