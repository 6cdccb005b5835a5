"""Triton: MQ-Net's Phi on a whole pool in one kernel (standardize -> relu(W1) -> sigmoid -> relu(W2)).

Each program scores BLOCK_ROWS rows: the k meta-inputs are read column by column (k is 2 for
MQ-Net), the hidden layer is a (BLOCK_ROWS, HIDDEN) register tile, and the output layer is a row
sum. One hidden layer only (MQ-Net's 2 -> 64 -> 1); deeper MLPs use the other backends.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _nonneg_mlp_score_kernel(z_ptr, mean_ptr, std_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
                             n_rows, stride_z,
                             K: tl.constexpr, HIDDEN: tl.constexpr, HIDDEN_PAD: tl.constexpr,
                             STANDARDIZE: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    units = tl.arange(0, HIDDEN_PAD)
    unit_mask = units < HIDDEN
    acc = tl.zeros((BLOCK_ROWS, HIDDEN_PAD), dtype=tl.float32) + tl.load(b1_ptr + units, mask=unit_mask, other=0.0)[None, :]
    for k in tl.static_range(K):
        zk = tl.load(z_ptr + rows * stride_z + k, mask=row_mask, other=0.0)
        if STANDARDIZE:
            zk = (zk - tl.load(mean_ptr + k)) / tl.load(std_ptr + k)
        wk = tl.maximum(tl.load(w1_ptr + units * K + k, mask=unit_mask, other=0.0), 0.0)
        acc += zk[:, None] * wk[None, :]
    hidden = 1.0 / (1.0 + tl.exp(-acc))
    w2 = tl.maximum(tl.load(w2_ptr + units, mask=unit_mask, other=0.0), 0.0)  # padded units weigh 0
    score = tl.sum(hidden * w2[None, :], axis=1) + tl.load(b2_ptr)
    tl.store(out_ptr + rows, score, mask=row_mask)


@triton_op("mqnet_fast_triton::nonneg_mlp_score", mutates_args=())
def nonneg_mlp_score(z: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                     mean: torch.Tensor, std: torch.Tensor, standardize: bool) -> torch.Tensor:
    """z (N, k) float32; w1 (H, k), b1 (H,), w2 (1, H), b2 (1,), mean/std (k,) float32 (ignored
    unless `standardize`). Returns (N,) float32 scores."""
    n, k = z.shape
    hidden = w1.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=z.device)
    block_rows = 128
    wrap_triton(_nonneg_mlp_score_kernel)[(triton.cdiv(n, block_rows),)](
        z, mean, std, w1, b1, w2, b2, out, n, z.stride(0),
        K=k, HIDDEN=hidden, HIDDEN_PAD=triton.next_power_of_2(hidden), STANDARDIZE=standardize,
        BLOCK_ROWS=block_rows)
    return out
