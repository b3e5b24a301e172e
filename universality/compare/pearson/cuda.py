"""The CUDA kernel: sparse outer products on the GPU (CuPy ``RawKernel``).

Token-major: one thread block per token ``t`` walks its ``nnz_A(t) x nnz_B(t)`` products and
adds each into ``sxy`` with a float64 ``atomicAdd``.  The order of the additions varies from
run to run, so sums can differ in the last bit between runs (and exact ties, e.g. duplicated
features, may resolve either way); the CPU kernels sum in token order instead.
"""
from __future__ import annotations

import numpy as np

from universality.compare.pearson.scatter import ScatterBackend

_CUDA_SRC = r"""
extern "C" __global__ void outer_scatter_{T}(
    const long long* __restrict__ a_indptr, const int* __restrict__ a_idx, const {T}* __restrict__ a_val,
    const long long* __restrict__ b_indptr, const int* __restrict__ b_idx, const {T}* __restrict__ b_val,
    double* __restrict__ S, const long long n_b, const long long n_tokens)
{
    // one block per token t; its threads walk the nnz_A(t) x nnz_B(t) products
    const long long t = blockIdx.x;
    if (t >= n_tokens) return;
    const long long a0 = a_indptr[t], na = a_indptr[t + 1] - a0;
    const long long b0 = b_indptr[t], nb = b_indptr[t + 1] - b0;
    const long long total = na * nb;
    for (long long k = threadIdx.x; k < total; k += blockDim.x) {
        const long long p = a0 + k / nb, q = b0 + k % nb;
        atomicAdd(&S[(long long)a_idx[p] * n_b + b_idx[q]], (double)a_val[p] * (double)b_val[q]);
    }
}
"""
_cuda_kernels: dict = {}


def _cuda_outer_scatter(S, a, b):  # pragma: no cover - needs a GPU
    """GPU: ``S[i, j] += sum_t a[t, i] b[t, j]`` for CSR triples on the device (atomicAdd, fp64)."""
    import cupy

    ctype = "double" if a[2].dtype == cupy.float64 else "float"
    if ctype not in _cuda_kernels:
        src = _CUDA_SRC.replace("{T}", ctype)
        _cuda_kernels[ctype] = cupy.RawKernel(src, f"outer_scatter_{ctype}")
    kern = _cuda_kernels[ctype]
    n_tok = len(a[0]) - 1
    if n_tok == 0:
        return
    vt = cupy.float64 if ctype == "double" else cupy.float32
    args = (
        cupy.ascontiguousarray(a[0], dtype=cupy.int64),
        cupy.ascontiguousarray(a[1], dtype=cupy.int32),
        cupy.ascontiguousarray(a[2], dtype=vt),
        cupy.ascontiguousarray(b[0], dtype=cupy.int64),
        cupy.ascontiguousarray(b[1], dtype=cupy.int32),
        cupy.ascontiguousarray(b[2], dtype=vt),
        S,
        np.int64(S.shape[1]),
        np.int64(n_tok),
    )
    kern((n_tok,), (128,), args)


class CudaScatter(ScatterBackend):
    """``backend="cuda"``: :func:`_cuda_outer_scatter` per buffer; the moments are summed chunk
    by chunk on the device by the accumulator (array-module code)."""

    def add(self, sxy, a, b, side_a: dict, side_b: dict) -> None:  # pragma: no cover - GPU
        if a[1].size == 0 or b[1].size == 0:
            return
        _cuda_outer_scatter(sxy, a, b)
