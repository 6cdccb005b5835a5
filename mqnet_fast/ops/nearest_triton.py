"""Triton: best key per query, tiled dot products with the max/min reduction fused in the epilogue.

Each program owns BLOCK_M queries and walks all keys in BLOCK_N tiles. When d fits one BLOCK_K
(d <= 256 on tensor cores), the query tile is loaded once and stays on chip, and each key tile is
one tl.dot, so the key loads pipeline across tiles; larger d accumulates over BLOCK_K chunks.
Tensor cores take bf16/fp16 inputs with fp32 accumulation; fp32 inputs use input_precision="ieee"
so results match the float32 reference to rounding, not tf32's 10-bit mantissa. Each (BLOCK_M,
BLOCK_N) tile is reduced at once (one value+index reduction), so no N x M matrix exists; full key
tiles skip the column mask, the ragged last tile is masked.
Ties go to the lowest key index: the reduction keeps the first extreme of a tile and a later tile
replaces the running best only when strictly better.
Offsets are 64-bit: a row index is cast to int64 before it is multiplied by the row stride, since
row * stride passes 2^31 on pools of N * d >= 2^31 elements (1.05M x 2048 features) and int32
arithmetic would wrap to an address outside the tensor without an error.
DEFER=True (a tile-sweep option, off by default until timed on a GPU) moves the reduction out of
the loop: each (query, column slot) keeps its best value and the start of the first key tile that
reached it (strictly better replaces, so the earliest tile wins), three instructions per element and
no cross-thread shuffles instead of a tie-breaking value+index reduction per tile; one reduction at
the end takes the best slot, ties to the lowest key index. Same values, same indices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _key_tile_dot(q, q_ptr, k_ptr, rows, row_mask, cols, col_mask, dim, stride_q, stride_k,
                  Q_RESIDENT: tl.constexpr, MASK_COLS: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) float32 dot products of the query rows with one tile of keys."""
    dims = tl.arange(0, BLOCK_K)
    key_offsets = cols.to(tl.int64)[:, None] * stride_k  # int64: col * stride can pass 2^31
    if Q_RESIDENT:  # d fits one BLOCK_K: the queries were loaded once, one dot per key tile
        k_mask = (dims < dim)[None, :]
        if MASK_COLS:
            k_mask = k_mask & col_mask[:, None]
        k = tl.load(k_ptr + key_offsets + dims[None, :], mask=k_mask, other=0.0)
        if IEEE:
            acc = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            acc = tl.dot(q, tl.trans(k))
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        query_offsets = rows.to(tl.int64)[:, None] * stride_q
        for start_k in range(0, dim, BLOCK_K):
            d_mask = (start_k + dims) < dim
            qt = tl.load(q_ptr + query_offsets + (start_k + dims)[None, :],
                         mask=row_mask[:, None] & d_mask[None, :], other=0.0)
            k = tl.load(k_ptr + key_offsets + (start_k + dims)[None, :],
                        mask=col_mask[:, None] & d_mask[None, :], other=0.0)
            if IEEE:
                acc += tl.dot(qt, tl.trans(k), input_precision="ieee")
            else:
                acc += tl.dot(qt, tl.trans(k))
    return acc


@triton.jit
def _tile_values(acc, qq, kk_ptr, cols, col_mask, L2: tl.constexpr, MASK_COLS: tl.constexpr):
    """The tile's values to compare: dot products (cosine, larger is better) or squared distances
    |q|^2 + |k|^2 - 2 q.k (l2, smaller is better); masked columns never win."""
    if L2:
        kk = tl.load(kk_ptr + cols, mask=col_mask, other=0.0)
        tile = qq[:, None] + kk[None, :] - 2.0 * acc
        if MASK_COLS:
            tile = tl.where(col_mask[None, :], tile, float("inf"))
    else:
        tile = acc
        if MASK_COLS:
            tile = tl.where(col_mask[None, :], tile, float("-inf"))
    return tile


@triton.jit
def _reduce_tile(tile, start_n, best, best_idx, L2: tl.constexpr):
    """Fold one tile into the running best (value, index); a later tile wins only when strictly
    better, and within a tile the first extreme wins, so ties go to the lowest key index."""
    if L2:
        tile_best, tile_idx = tl.min(tile, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best
    else:
        tile_best, tile_idx = tl.max(tile, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best > best
    best = tl.where(better, tile_best, best)
    best_idx = tl.where(better, start_n + tile_idx.to(tl.int64), best_idx)
    return best, best_idx


@triton.jit
def _fold_tile(tile, start_n, slot_best, slot_start, L2: tl.constexpr):
    """DEFER: fold one tile into the per-slot bests, elementwise; strictly better replaces, so each
    slot keeps the earliest tile that reached its best."""
    if L2:
        better = tile < slot_best
    else:
        better = tile > slot_best
    return tl.where(better, tile, slot_best), tl.where(better, start_n, slot_start)


@triton.jit
def _reduce_slots(slot_best, slot_start, L2: tl.constexpr, BLOCK_N: tl.constexpr):
    """DEFER: the best slot of each row, ties to the lowest key index (slot start + column)."""
    if L2:
        best = tl.min(slot_best, axis=1)
    else:
        best = tl.max(slot_best, axis=1)
    keys = slot_start + tl.arange(0, BLOCK_N)[None, :]
    best_idx = tl.min(tl.where(slot_best == best[:, None], keys, 2147483647), axis=1)
    return best, best_idx.to(tl.int64)


@triton.jit
def _key_tile(q, q_ptr, k_ptr, qq, kk_ptr, rows, row_mask, start_n, n_k, dim, stride_q, stride_k, best, best_idx,
              slot_best, slot_start, L2: tl.constexpr, IEEE: tl.constexpr, Q_RESIDENT: tl.constexpr,
              DEFER: tl.constexpr, MASK_COLS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """The key tile starting at start_n, folded into the running bests: per row (best, best_idx), or
    per slot (slot_best, slot_start) with DEFER; the others pass through unchanged."""
    cols = start_n + tl.arange(0, BLOCK_N)
    acc = _key_tile_dot(q, q_ptr, k_ptr, rows, row_mask, cols, cols < n_k, dim, stride_q, stride_k,
                        Q_RESIDENT, MASK_COLS, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)
    tile = _tile_values(acc, qq, kk_ptr, cols, cols < n_k, L2, MASK_COLS)
    if DEFER:
        slot_best, slot_start = _fold_tile(tile, start_n, slot_best, slot_start, L2)
    else:
        best, best_idx = _reduce_tile(tile, start_n, best, best_idx, L2)
    return best, best_idx, slot_best, slot_start


@triton.jit
def _nearest_kernel(q_ptr, k_ptr, qq_ptr, kk_ptr, values_ptr, indices_ptr, n_q, n_k, dim,
                    stride_q, stride_k, L2: tl.constexpr, IEEE: tl.constexpr, Q_RESIDENT: tl.constexpr,
                    DEFER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_q
    if L2:
        best = tl.full((BLOCK_M,), float("inf"), tl.float32)
        qq = tl.load(qq_ptr + rows, mask=row_mask, other=0.0)
    else:
        best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        qq = best  # not read for cosine
    best_idx = tl.zeros((BLOCK_M,), tl.int64)
    if DEFER:
        slot_best = tl.full((BLOCK_M, BLOCK_N), float("inf") if L2 else float("-inf"), tl.float32)
        slot_start = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
    else:  # unused
        slot_best = tl.zeros((1, 1), tl.float32)
        slot_start = tl.zeros((1, 1), tl.int32)
    dims = tl.arange(0, BLOCK_K)
    if Q_RESIDENT:  # BLOCK_K >= d: the query tile is read once and stays on chip for all key tiles
        q = tl.load(q_ptr + rows.to(tl.int64)[:, None] * stride_q + dims[None, :],
                    mask=row_mask[:, None] & (dims < dim)[None, :], other=0.0)
    else:
        q = tl.zeros((BLOCK_M, BLOCK_K), q_ptr.dtype.element_ty)  # unused: the K loop reloads chunks
    # full key tiles without column masks, then the ragged last tile
    n_full = n_k // BLOCK_N * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        best, best_idx, slot_best, slot_start = _key_tile(
            q, q_ptr, k_ptr, qq, kk_ptr, rows, row_mask, start_n, n_k, dim, stride_q, stride_k, best, best_idx,
            slot_best, slot_start, L2, IEEE, Q_RESIDENT, DEFER, False, BLOCK_M, BLOCK_N, BLOCK_K)
    if n_full < n_k:
        best, best_idx, slot_best, slot_start = _key_tile(
            q, q_ptr, k_ptr, qq, kk_ptr, rows, row_mask, n_full, n_k, dim, stride_q, stride_k, best, best_idx,
            slot_best, slot_start, L2, IEEE, Q_RESIDENT, DEFER, True, BLOCK_M, BLOCK_N, BLOCK_K)
    if DEFER:
        best, best_idx = _reduce_slots(slot_best, slot_start, L2, BLOCK_N)
    if L2:
        best = tl.sqrt(tl.maximum(best, 0.0))
    tl.store(values_ptr + rows, best, mask=row_mask)
    tl.store(indices_ptr + rows, best_idx, mask=row_mask)


# Tile configuration per case; TUNED_CONFIG replaces it when set (benchmarks/gpu/gpu_tune_nearest.py).
TUNED_CONFIG: dict | None = None


def launch_config(queries: torch.Tensor) -> dict:
    """Tiles for `queries` (N, d). BLOCK_K >= d keeps the query tile resident (one dot per key tile,
    and the key loads pipeline across tiles); larger d loops over d in BLOCK_K chunks."""
    dim = queries.shape[1]
    half_on_gpu = queries.is_cuda and queries.dtype != torch.float32
    resident_max = 256 if half_on_gpu else 64
    block_k = max(16, triton.next_power_of_2(dim)) if dim <= resident_max else (64 if half_on_gpu else 32)
    if TUNED_CONFIG is not None:
        config = dict(TUNED_CONFIG)
    elif half_on_gpu:
        # tensor-core tiles: the fastest of benchmarks/gpu/gpu_tune_nearest.py's second sweep on an H100
        # (benchmarks/results/gpu/h100/run2-nearest-tune.json: 27.3 ms for 1M x 50k x 128, 47% of peak;
        # 27.4 ms in the first sweep too, where 64 x 128 x 4 warps tied)
        config = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4)
    elif queries.is_cuda:  # float32 "ieee" dots run on CUDA cores: smaller tiles (not tuned)
        config = dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    else:  # the interpreter
        config = dict(BLOCK_M=64, BLOCK_N=64)
    config.setdefault("BLOCK_K", block_k)
    config.setdefault("DEFER", False)
    config["Q_RESIDENT"] = config["BLOCK_K"] >= dim
    return config


@triton_op("mqnet_fast_triton::nearest", mutates_args=())
def nearest(queries: torch.Tensor, keys: torch.Tensor, l2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (N, d), keys (M, d), same dtype (float32, bfloat16 or float16), M >= 1. cosine: max
    similarity of the normalized rows (normalized in float32, then stored in the input dtype: for
    half-precision input a second rounding, up to 2u + u^2 on a value, u = 2^-8 bf16 / 2^-11 fp16);
    l2: min Euclidean distance (|q|^2, |k|^2 in float32 from the stored values). Half-precision
    dots multiply exactly and accumulate in float32; float32 dots are IEEE float32 ("ieee", not
    tf32). Returns (values (N,) float32, indices (N,) int64)."""
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
