"""Shared unit-sized stores of the fault-injection suite (issue 20): each test corrupts a copy."""
import shutil

import numpy as np
import pytest
import torch

from universality.core import store
from universality.sae.model import SAE


def write_acts(path, data, chunk_rows=256, dtype="float16", attrs=None):
    """An activation store as the activations rule writes it (sealed)."""
    arr = store.create_array(path, data.shape, dtype, chunk_rows=chunk_rows, attrs=attrs)
    w = store.RowWriter(arr)
    w.append(data)
    w.close()
    store.seal(path)
    return path


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    """Activations (2,000 x 16 float16, 8 chunks), an SAE and its feature store."""
    from universality.sae import features

    root = tmp_path_factory.mktemp("pristine")
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((2000, 16)) + 0.5).astype(np.float32)
    attrs = {"segments": {"sae": [0, 1000], "eval": [1000, 2000]}, "model": "m",
             "token_sets": {"sae": "aaaa", "eval": "bbbb"}}
    write_acts(root / "L0.zarr", data, attrs=attrs)
    sae = SAE.initialized(16, 64, 0, 0.1)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    sae.save(root / "sae")
    features.encode(str(root / "sae"), str(root / "L0.zarr"), str(root / "f.zarr"), chunk_rows=300)
    return root


@pytest.fixture
def work(pristine, tmp_path):
    """A fresh copy of the pristine stores to break."""
    dst = tmp_path / "w"
    shutil.copytree(pristine, dst)
    return dst
