"""Triton: MQ-Net's Phi on a whole pool in one kernel (standardize -> relu(W1) -> sigmoid -> relu(W2)).

Each program scores BLOCK_ROWS rows: the k meta-inputs are read column by column (k is 2 for
MQ-Net), the hidden layer is a (BLOCK_ROWS, HIDDEN) register tile, and the output layer is a row
sum. One hidden layer only (MQ-Net's 2 -> 64 -> 1); deeper MLPs use the other backends.

Speed: the hidden layer is computed in the base-2 exponent domain (-log2(e) folded into the first
layer's weights and bias once per program), so each unit costs two FMAs, one ex2 and one fast
reciprocal-divide (div.full, 2 ulp): the special-function unit, not memory, bounds the kernel.
Input validation rides along: every program checks the values it reads (z, mean, std, the weights
and biases: NaN/Inf, std <= 0) and ORs a bit per offending argument into `flags`, so the op learns
of bad input with one read-back after the kernel instead of a host synchronization per argument.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

# flags bits, in the order of the op's arguments
FLAG_NAMES = ("z", "mean", "std", "weights[0]", "biases[0]", "weights[1]", "biases[1]", "std (<= 0)")
_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _bad(values, mask):
    """1 if any masked-in entry of the 1-D block is NaN or +-Inf, else 0 (int32 scalar)."""
    bad = mask & ((values != values) | (tl.abs(values) == float("inf")))
    return tl.max(bad.to(tl.int32), axis=0)


@triton.jit
def _bad_scalar(value):
    return ((value != value) | (tl.abs(value) == float("inf"))).to(tl.int32)


@triton.jit
def _nonneg_mlp_score_kernel(z_ptr, mean_ptr, std_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, flags_ptr,
                             n_rows, stride_z,
                             K: tl.constexpr, HIDDEN: tl.constexpr, HIDDEN_PAD: tl.constexpr,
                             STANDARDIZE: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    units = tl.arange(0, HIDDEN_PAD)
    unit_mask = units < HIDDEN
    b1 = tl.load(b1_ptr + units, mask=unit_mask, other=0.0)
    flags = _bad(b1, unit_mask) * 16
    # pre-activation t = -log2(e) (relu(W1) z + b1), so that sigmoid = 1 / (1 + 2^t)
    acc = tl.zeros((BLOCK_ROWS, HIDDEN_PAD), dtype=tl.float32) + (b1 * -_LOG2E)[None, :]
    for k in tl.static_range(K):
        zk = tl.load(z_ptr + rows.to(tl.int64) * stride_z + k, mask=row_mask, other=0.0)
        flags |= _bad(zk, row_mask)
        if STANDARDIZE:
            mean_k = tl.load(mean_ptr + k)
            std_k = tl.load(std_ptr + k)
            flags |= _bad_scalar(mean_k) * 2 | _bad_scalar(std_k) * 4 | (std_k <= 0).to(tl.int32) * 128
            zk = (zk - mean_k) / std_k
        wk = tl.load(w1_ptr + units * K + k, mask=unit_mask, other=0.0)
        flags |= _bad(wk, unit_mask) * 8
        acc += zk[:, None] * (tl.maximum(wk, 0.0) * -_LOG2E)[None, :]
    hidden = tl.fdiv(tl.full(acc.shape, 1.0, tl.float32), 1.0 + tl.exp2(acc))
    w2 = tl.load(w2_ptr + units, mask=unit_mask, other=0.0)
    b2 = tl.load(b2_ptr)
    flags |= _bad(w2, unit_mask) * 32 | _bad_scalar(b2) * 64
    score = tl.sum(hidden * tl.maximum(w2, 0.0)[None, :], axis=1) + b2  # padded units weigh 0
    tl.store(out_ptr + rows, score, mask=row_mask)
    tl.atomic_or(flags_ptr, flags, mask=flags != 0)


# Rows per program and warps; TUNED_CONFIG replaces it when set (benchmarks/gpu_bench.py sweeps it).
TUNED_CONFIG: dict | None = None


def launch_config() -> dict:
    return dict(TUNED_CONFIG) if TUNED_CONFIG is not None else dict(BLOCK_ROWS=128, num_warps=4)


def _launch(kernel, z, w1, b1, w2, b2, mean, std, standardize, out, flags) -> None:
    config = launch_config()
    kernel[(triton.cdiv(z.shape[0], config["BLOCK_ROWS"]),)](
        z, mean, std, w1, b1, w2, b2, out, flags, z.shape[0], z.stride(0),
        K=z.shape[1], HIDDEN=w1.shape[0], HIDDEN_PAD=triton.next_power_of_2(w1.shape[0]), STANDARDIZE=standardize,
        **config)


@triton_op("mqnet_fast_triton::nonneg_mlp_score", mutates_args=())
def nonneg_mlp_score(z: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                     mean: torch.Tensor, std: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """z (N, k) float32; w1 (H, k), b1 (H,), w2 (1, H), b2 (1,), mean/std (k,) float32 (not read
    unless `standardize`). Returns (scores (N,) float32, flags (1,) int32): bit i of flags set means
    the argument FLAG_NAMES[i] holds NaN/Inf (or, for the last bit, std <= 0); scores are then
    meaningless."""
    out = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    flags = torch.zeros(1, dtype=torch.int32, device=z.device)
    _launch(wrap_triton(_nonneg_mlp_score_kernel), z, w1, b1, w2, b2, mean, std, standardize, out, flags)
    return out, flags


_FLAGS: dict = {}


def score(z, w1, b1, w2, b2, mean, std, standardize: bool) -> tuple[torch.Tensor, int]:
    """What ops.nonneg_mlp_score calls: (scores, flags as an int). In eager mode the kernel is launched
    directly (no custom-op dispatch) with a zeroed flags word kept per device and stream, reset only
    after bad input, so a call costs one launch and one 4-byte read-back; under torch.compile the
    traceable triton_op runs instead."""
    if torch.compiler.is_compiling() or not z.is_cuda:
        out, flags = nonneg_mlp_score(z, w1, b1, w2, b2, mean, std, standardize)
        return out, int(flags)
    key = (z.device.index, torch.cuda.current_stream(z.device).cuda_stream)
    flags = _FLAGS.get(key)
    if flags is None:
        flags = _FLAGS[key] = torch.zeros(1, dtype=torch.int32, device=z.device)
    out = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    _launch(_nonneg_mlp_score_kernel, z, w1, b1, w2, b2, mean, std, standardize, out, flags)
    value = int(flags)
    if value:
        flags.zero_()
    return out, value
