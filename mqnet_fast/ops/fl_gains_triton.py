"""Triton: saturated facility-location gains, gain_j = sum_i max(min(s_ij, hi_i) - lo_i, 0).

Each program owns BLOCK_M candidates and walks the ground rows in BLOCK_N tiles; a tile's
similarities are tl.dot products over BLOCK_K chunks of the features (with a second factor, a second
dot product multiplied in), clipped, and summed over the tile's rows into a float32 running sum per
candidate at once, so no n x m matrix exists. float32 dots are IEEE ("ieee", not tf32). Offsets are
64-bit (row * stride passes 2^31 on large pools).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _tile_dot(g_ptr, c_ptr, g_rows, g_mask, c_rows, c_mask, dim, stride_g, stride_c,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N, BLOCK_M) float32 dots of ground rows with candidate rows."""
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    dims = tl.arange(0, BLOCK_K)
    g_off = g_rows.to(tl.int64)[:, None] * stride_g
    c_off = c_rows.to(tl.int64)[:, None] * stride_c
    for start_k in range(0, dim, BLOCK_K):
        d_mask = (start_k + dims) < dim
        g = tl.load(g_ptr + g_off + (start_k + dims)[None, :], mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        c = tl.load(c_ptr + c_off + (start_k + dims)[None, :], mask=c_mask[:, None] & d_mask[None, :], other=0.0)
        acc += tl.dot(g, tl.trans(c), input_precision="ieee")
    return acc


@triton.jit
def _fl_gains_kernel(g_ptr, c_ptr, g2_ptr, c2_ptr, lo_ptr, hi_ptr, out_ptr, n_g, n_c, dim, dim2,
                     stride_g, stride_c, stride_g2, stride_c2, HAS2: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    c_rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    c_mask = c_rows < n_c
    total = tl.zeros((BLOCK_M,), tl.float32)
    for start_n in range(0, n_g, BLOCK_N):
        g_rows = start_n + tl.arange(0, BLOCK_N)
        g_mask = g_rows < n_g
        sim = _tile_dot(g_ptr, c_ptr, g_rows, g_mask, c_rows, c_mask, dim, stride_g, stride_c,
                        BLOCK_M, BLOCK_N, BLOCK_K)
        if HAS2:
            sim = sim * _tile_dot(g2_ptr, c2_ptr, g_rows, g_mask, c_rows, c_mask, dim2, stride_g2, stride_c2,
                                  BLOCK_M, BLOCK_N, BLOCK_K)
        lo = tl.load(lo_ptr + g_rows, mask=g_mask, other=0.0)
        hi = tl.load(hi_ptr + g_rows, mask=g_mask, other=0.0)
        gain = tl.maximum(tl.minimum(sim, hi[:, None]) - lo[:, None], 0.0)
        gain = tl.where(g_mask[:, None], gain, 0.0)
        total += tl.sum(gain, axis=0)
    tl.store(out_ptr + c_rows, total, mask=c_mask)


def launch_config(ground: torch.Tensor) -> dict:
    if ground.is_cuda:  # float32 "ieee" dots on CUDA cores (not tuned: no GPU run yet)
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32)  # the interpreter


@triton_op("mqnet_fast_triton::fl_gains", mutates_args=())
def fl_gains(ground: torch.Tensor, candidates: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
             ground2: torch.Tensor | None, candidates2: torch.Tensor | None) -> torch.Tensor:
    """ground (n, d), candidates (m, d), lo, hi (n,), optional ground2 (n, e), candidates2 (m, e);
    float32 (half-precision features are widened). Returns (m,) float32."""
    ground, candidates = ground.float().contiguous(), candidates.float().contiguous()
    lo, hi = lo.float().contiguous(), hi.float().contiguous()
    has2 = ground2 is not None
    if has2:
        ground2, candidates2 = ground2.float().contiguous(), candidates2.float().contiguous()
    else:
        ground2, candidates2 = ground, candidates  # not read
    m = candidates.shape[0]
    out = torch.empty(m, dtype=torch.float32, device=candidates.device)
    launch = launch_config(ground)
    wrap_triton(_fl_gains_kernel)[(triton.cdiv(m, launch["BLOCK_M"]),)](
        ground, candidates, ground2, candidates2, lo, hi, out, ground.shape[0], m, ground.shape[1],
        ground2.shape[1], ground.stride(0), candidates.stride(0), ground2.stride(0), candidates2.stride(0),
        HAS2=has2, **launch)
    return out
