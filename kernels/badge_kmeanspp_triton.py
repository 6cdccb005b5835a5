"""Triton: BADGE k-means++ seeding over implicit gradient embeddings, with no host synchronization.

g_i = (onehot(argmax p_i) - p_i) outer h_i is never formed: |g_i - g_c|^2 = G_i + G_c - 2 (a_i.a_c)(h_i.h_c)
with a = onehot - p and G = |a|^2 |h|^2. Each pick is one `_update_kernel` pass over the pool (reads
a and h once, lowers D^2, zeroes the picked row) followed by device-side sampling with torch ops
(float64 cumulative sum, searchsorted against the pre-drawn uniform, the reference's two edge cases
as tensor selects), so the pick never travels to the host. The cumulative sum runs as a parallel
scan, so a pick can differ from the reference's index-order sum only when the uniform lands within
float64 rounding of a boundary.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op


@triton.jit
def _update_kernel(a_ptr, h_ptr, g_ptr, d2_ptr, center_ptr, n, n_classes, dim, stride_a, stride_h,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    center = tl.load(center_ptr)
    cls = tl.arange(0, BLOCK_C)
    ad = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, n_classes, BLOCK_C):
        c_mask = (start + cls) < n_classes
        ac = tl.load(a_ptr + center * stride_a + start + cls, mask=c_mask, other=0.0)
        ab = tl.load(a_ptr + rows[:, None] * stride_a + (start + cls)[None, :],
                     mask=row_mask[:, None] & c_mask[None, :], other=0.0)
        ad += tl.sum(ab * ac[None, :], axis=1)
    dims = tl.arange(0, BLOCK_D)
    hd = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, dim, BLOCK_D):
        d_mask = (start + dims) < dim
        hc = tl.load(h_ptr + center * stride_h + start + dims, mask=d_mask, other=0.0).to(tl.float32)
        hb = tl.load(h_ptr + rows[:, None] * stride_h + (start + dims)[None, :],
                     mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        hd += tl.sum(hb * hc[None, :], axis=1)
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0)
    gc = tl.load(g_ptr + center)
    dist = tl.maximum((g + gc) - 2.0 * (ad * hd), 0.0)
    d2 = tl.minimum(tl.load(d2_ptr + rows, mask=row_mask, other=0.0), dist)
    d2 = tl.where(rows == center, 0.0, d2)
    tl.store(d2_ptr + rows, d2, mask=row_mask)


@custom_op("mqnet_fast_triton::badge_kmeanspp", mutates_args=())
def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, uniforms: torch.Tensor) -> torch.Tensor:
    """probs (N, C) float32; feats (N, d) float32, bfloat16 or float16 (widened on load);
    uniforms (k - 1,) float64 on the same device. Returns the picks (k,) int64."""
    n = probs.shape[0]
    device = probs.device
    a = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype) - probs
    g = (a * a).sum(1) * (feats.float() * feats.float()).sum(1)
    feats = feats.contiguous()
    d2 = torch.full((n,), float("inf"), dtype=torch.float32, device=device)
    picked = torch.zeros(n, dtype=torch.bool, device=device)
    picks = torch.empty(k, dtype=torch.int64, device=device)
    if k == 0:
        return picks
    picks[0] = torch.argmax(g)
    block_n = 64
    block_c = min(128, triton.next_power_of_2(max(probs.shape[1], 1)))
    block_d = min(128, triton.next_power_of_2(max(feats.shape[1], 1)))
    grid = (triton.cdiv(n, block_n),)
    rows = torch.arange(n, device=device)
    for step in range(k):
        center = picks[step:step + 1]
        picked.index_fill_(0, center, True)
        _update_kernel[grid](a, feats, g, d2, center, n, probs.shape[1], feats.shape[1], a.stride(0),
                             feats.stride(0), BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_D=block_d)
        if step + 1 == k:
            break
        cum = torch.cumsum(d2.double(), 0)
        total = cum[-1:]
        chosen = torch.searchsorted(cum, uniforms[step:step + 1] * total, right=True)
        # rounding put the target at the total: the last row with D^2 > 0
        last_positive = torch.max(torch.where(d2 > 0, rows, -1)).view(1)
        chosen = torch.where(chosen == n, last_positive, chosen)
        # every D^2 is 0 (duplicates): the lowest unpicked row
        lowest_unpicked = torch.argmin(picked.to(torch.int8)).view(1)
        picks[step + 1:step + 2] = torch.where(total == 0, lowest_unpicked, chosen)
    return picks


@badge_kmeanspp.register_fake
def _(probs, feats, k, uniforms):
    return probs.new_empty(k, dtype=torch.int64)
