"""Triton: best key per query, tiled dot products with the max/min reduction fused in the epilogue.

Each program owns BLOCK_M queries and walks all keys in BLOCK_N tiles; a (BLOCK_M, BLOCK_N) tile of
dot products is accumulated over d in BLOCK_K chunks with tl.dot (tensor cores: bf16/fp16 inputs
with fp32 accumulation; fp32 inputs use input_precision="ieee" so results match the float32
reference to rounding, not tf32's 10-bit mantissa) and reduced at once, so no N x M matrix exists.
Ties go to the lowest key index: tl.argmax/argmin keep the first maximum of a tile and a later tile
replaces the running best only when strictly better.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _nearest_kernel(q_ptr, k_ptr, qq_ptr, kk_ptr, values_ptr, indices_ptr, n_q, n_k, dim,
                    stride_q, stride_k, L2: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_q
    dims = tl.arange(0, BLOCK_K)
    if L2:
        best = tl.full((BLOCK_M,), float("inf"), tl.float32)
        qq = tl.load(qq_ptr + rows, mask=row_mask, other=0.0)
    else:
        best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_M,), tl.int64)
    for start_n in range(0, n_k, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_mask = cols < n_k
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for start_k in range(0, dim, BLOCK_K):
            d_mask = (start_k + dims) < dim
            q = tl.load(q_ptr + rows[:, None] * stride_q + (start_k + dims)[None, :],
                        mask=row_mask[:, None] & d_mask[None, :], other=0.0)
            k = tl.load(k_ptr + cols[:, None] * stride_k + (start_k + dims)[None, :],
                        mask=col_mask[:, None] & d_mask[None, :], other=0.0)
            if IEEE:
                acc += tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                acc += tl.dot(q, tl.trans(k))
        if L2:
            kk = tl.load(kk_ptr + cols, mask=col_mask, other=0.0)
            tile = qq[:, None] + kk[None, :] - 2.0 * acc
            tile = tl.where(col_mask[None, :], tile, float("inf"))
            tile_best = tl.min(tile, axis=1)
            tile_idx = tl.argmin(tile, axis=1)
            better = tile_best < best
        else:
            tile = tl.where(col_mask[None, :], acc, float("-inf"))
            tile_best = tl.max(tile, axis=1)
            tile_idx = tl.argmax(tile, axis=1)
            better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, start_n + tile_idx.to(tl.int64), best_idx)
    if L2:
        best = tl.sqrt(tl.maximum(best, 0.0))
    tl.store(values_ptr + rows, best, mask=row_mask)
    tl.store(indices_ptr + rows, best_idx, mask=row_mask)


# Tile configuration per case; TUNED_CONFIG replaces it when set (benchmarks/gpu_tune_nearest.py).
TUNED_CONFIG: dict | None = None


def launch_config(queries: torch.Tensor) -> dict:
    dim = queries.shape[1]
    if TUNED_CONFIG is not None:
        return dict(TUNED_CONFIG)
    block_k = min(64, max(16, triton.next_power_of_2(dim)))
    if queries.is_cuda and queries.dtype != torch.float32:
        # tensor-core tiles: the fastest of benchmarks/gpu_tune_nearest.py's sweep on an H200
        # (benchmarks/results/gpu/nearest-tune.json: 52 ms for 1M x 50k x 128, against 55 ms for 128 x 128)
        return dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=block_k, num_warps=8, num_stages=3)
    if queries.is_cuda:  # float32 "ieee" dots run on CUDA cores: smaller tiles (not tuned)
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=block_k, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=block_k)  # the interpreter


@triton_op("mqnet_fast_triton::nearest", mutates_args=())
def nearest(queries: torch.Tensor, keys: torch.Tensor, l2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (N, d), keys (M, d), same dtype (float32, bfloat16 or float16), M >= 1. cosine: max
    similarity of the normalized rows (normalized in float32, then stored in the input dtype);
    l2: min Euclidean distance. Returns (values (N,) float32, indices (N,) int64)."""
    n, dim = queries.shape
    if not l2:
        queries = F.normalize(queries.float(), dim=1).to(queries.dtype)
        keys = F.normalize(keys.float(), dim=1).to(keys.dtype)
    queries, keys = queries.contiguous(), keys.contiguous()
    qq = (queries.float() ** 2).sum(1)
    kk = (keys.float() ** 2).sum(1)
    values = torch.empty(n, dtype=torch.float32, device=queries.device)
    indices = torch.empty(n, dtype=torch.int64, device=queries.device)
    launch = launch_config(queries)
    wrap_triton(_nearest_kernel)[(triton.cdiv(n, launch["BLOCK_M"]),)](
        queries, keys, qq, kk, values, indices, n, keys.shape[0], dim, queries.stride(0), keys.stride(0),
        L2=l2, IEEE=queries.dtype == torch.float32, **launch)
    return values, indices
