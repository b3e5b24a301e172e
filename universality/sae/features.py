"""Sparse SAE feature activations over the shared evaluation tokens, stored as CSR in Zarr.

Layout (the AnnData on-disk convention, so other tools read it): a Zarr group with attrs
``encoding-type: csr_matrix``, ``shape: [tokens, F]`` and arrays ``indptr`` int64 [tokens + 1],
``indices`` int32 [nnz], ``data`` float32 [nnz]; plus ``counts`` int64 [F] (tokens on which each
feature fires). Rows are the ``eval`` segment of the activation store, in its order.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import zarr
from tqdm import tqdm

from universality.core import store
from universality.core.device import as_device
from universality.sae.model import SAE
# The readers live in a torch-free module (the compare and report jobs import them without
# paying torch's ~1.5 CPU s start-up); re-exported here for existing callers.
from universality.sae.readers import CSRStore, DenseEval, eval_range  # noqa: F401

NNZ_CHUNK = 1 << 20


@torch.no_grad()
def encode(sae_dir: str, acts_path: str, out: str, *, chunk_rows: int = 8192, attrs: dict | None = None,
           device: str | torch.device = "cpu") -> dict:
    """Encode the eval rows of ``acts_path`` with the SAE in ``sae_dir`` into a CSR store ``out``.

    The encoder runs on ``device`` (see :mod:`universality.core.device`); each chunk's dense
    ``[chunk_rows, F]`` activations come back to the CPU to be made sparse.
    """
    device = as_device(device)
    sae = SAE.load(sae_dir, device=device)
    acts = store.open_array(acts_path)
    lo, hi = eval_range(acts)
    n, f = hi - lo, sae.W_enc.shape[1]
    counts = np.zeros(f, dtype=np.int64)
    with store.atomic_output(out, sealed=True) as tmp:
        group = zarr.open_group(str(tmp), mode="w", attributes={
            "encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n, f],
            "sae": str(sae_dir), "activations": str(acts_path),
            # which eval tokens these rows are: pearson_pair refuses two sides of different ones
            "token_sets": dict(acts.attrs).get("token_sets"), **(attrs or {})})
        indptr = np.zeros(n + 1, dtype=np.int64)
        indices = group.create_array("indices", shape=(0,), dtype="int32", chunks=(NNZ_CHUNK,),
                                     compressors=store.compressor(), config=store.ARRAY_CONFIG)
        data = group.create_array("data", shape=(0,), dtype="float32", chunks=(NNZ_CHUNK,),
                                  compressors=store.compressor(), config=store.ARRAY_CONFIG)
        nnz = 0
        for start in tqdm(range(lo, hi, chunk_rows), desc="features", unit="chunk", mininterval=5):
            x = torch.from_numpy(np.asarray(acts[start : min(start + chunk_rows, hi)], dtype=np.float32))
            csr = sp.csr_matrix(sae.encode(x.to(device)).cpu().numpy())
            if not np.isfinite(csr.data).all():
                # caught here, not one rule later in pearson_pair
                raise ValueError(f"features of {sae_dir} on {acts_path}: non-finite activations in rows "
                                 f"{start}..{start + csr.shape[0]} (NaN/inf in the SAE weights or the activations)")
            r0 = start - lo
            indptr[r0 + 1 : r0 + 1 + csr.shape[0]] = nnz + csr.indptr[1:]
            nnz += csr.nnz
            indices.append(csr.indices.astype(np.int32))
            data.append(csr.data.astype(np.float32))
            counts += np.bincount(csr.indices, minlength=f)
        group.create_array("indptr", data=indptr, chunks=(1 << 16,), config=store.ARRAY_CONFIG)
        group.create_array("counts", data=counts, chunks=(f,), config=store.ARRAY_CONFIG)
    return {"tokens": n, "features": f, "nnz": int(nnz), "mean_l0": nnz / max(n, 1),
            "never_fired": int((counts == 0).sum())}
