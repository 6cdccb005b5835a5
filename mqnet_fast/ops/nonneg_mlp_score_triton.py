"""Triton: MQ-Net's Phi on a whole pool in one kernel (standardize -> relu(W1) -> sigmoid -> relu(W2)).

Each program scores BLOCK_ROWS rows, each row held by one thread: the (BLOCK_ROWS, k) meta-inputs
(k is 2 for MQ-Net) are read once, then the hidden units are unrolled one at a time with their
weights as uniform scalar loads, so the output layer is a running sum in registers rather than a
cross-thread reduction over a (rows, hidden) tile. One hidden layer only (MQ-Net's 2 -> 64 -> 1);
deeper MLPs use the other backends.

Speed: each unit is computed in the base-2 exponent domain (-log2(e) folded into its weights and
bias), so a row costs k FMAs, one ex2 and one fast reciprocal-divide (div.full, 2 ulp) per unit:
the special-function unit, not memory, bounds the kernel.
Input validation rides along: every program checks the z rows it reads, program 0 checks the
parameters (mean, std, weights, biases: NaN/Inf, std <= 0), and each ORs a bit per offending argument
into `flags`, so the op learns of bad input with one read-back after the kernel instead of a host
synchronization per argument.
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
def _is_bad(values):
    return (values != values) | (tl.abs(values) == float("inf"))


@triton.jit
def _any_bad(values):
    """1 if any entry of the 2-D block is NaN or +-Inf, else 0 (int32 scalar); masked-out entries must be 0."""
    return tl.max(tl.max(_is_bad(values).to(tl.int32), axis=1), axis=0)


@triton.jit
def _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, k, STANDARDIZE: tl.constexpr):
    """Column k of the row block (BLOCK_ROWS,), standardized if asked, and its NaN/Inf mask."""
    zk = tl.load(z_ptr + offsets + k, mask=row_mask, other=0.0)
    bad = _is_bad(zk)
    if STANDARDIZE:
        zk = (zk - tl.load(mean_ptr + k)) / tl.load(std_ptr + k)
    return zk, bad


@triton.jit
def _folded_weight(w1_ptr, u, k, K: tl.constexpr):
    return tl.maximum(tl.load(w1_ptr + u * K + k), 0.0) * -_LOG2E


@triton.jit
def _nonneg_mlp_score_kernel(z_ptr, mean_ptr, std_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, flags_ptr,
                             n_rows, stride_z,
                             K: tl.constexpr, K_PAD: tl.constexpr, HIDDEN: tl.constexpr, HIDDEN_PAD: tl.constexpr,
                             STANDARDIZE: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    offsets = rows.to(tl.int64) * stride_z  # int64: row * stride passes 2^31 on pools of 2^31+ elements
    # the first four columns stay in registers (MQ-Net has two); more are re-read per unit (L1 hits)
    z0, bad = _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, 0, STANDARDIZE)
    z1 = z0
    z2 = z0
    z3 = z0
    if K > 1:
        z1, bad1 = _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, 1, STANDARDIZE)
        bad = bad | bad1
    if K > 2:
        z2, bad2 = _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, 2, STANDARDIZE)
        bad = bad | bad2
    if K > 3:
        z3, bad3 = _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, 3, STANDARDIZE)
        bad = bad | bad3
    for k in tl.static_range(4, K):
        _, bad_k = _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, k, STANDARDIZE)
        bad = bad | bad_k
    flags = tl.max(bad.to(tl.int32), axis=0)
    if pid == 0:  # the parameters are the same for every program: one checks them
        cols = tl.arange(0, K_PAD)
        col_mask = cols < K
        units = tl.arange(0, HIDDEN_PAD)
        unit_mask = units < HIDDEN
        w1 = tl.load(w1_ptr + units[:, None] * K + cols[None, :], mask=unit_mask[:, None] & col_mask[None, :],
                     other=0.0)
        b1 = tl.load(b1_ptr + units, mask=unit_mask, other=0.0)
        w2 = tl.load(w2_ptr + units, mask=unit_mask, other=0.0)
        flags |= _any_bad(w1) * 8 | _any_bad(b1[:, None]) * 16 | _any_bad(w2[:, None]) * 32
        flags |= _is_bad(tl.load(b2_ptr)).to(tl.int32) * 64
        if STANDARDIZE:
            mean = tl.load(mean_ptr + cols, mask=col_mask, other=0.0)
            std = tl.load(std_ptr + cols, mask=col_mask, other=1.0)
            flags |= _any_bad(mean[:, None]) * 2 | _any_bad(std[:, None]) * 4
            flags |= tl.max((col_mask & (std <= 0)).to(tl.int32), axis=0) * 128
    # One hidden unit at a time, each row in its own thread (no cross-thread reduction):
    # t = -log2(e) (relu(w_u) . z + b_u), sigmoid = 1 / (1 + 2^t), score += relu(w2_u) sigmoid.
    score = tl.zeros((BLOCK_ROWS,), tl.float32)
    for u in tl.static_range(HIDDEN):
        t = z0 * _folded_weight(w1_ptr, u, 0, K) + tl.load(b1_ptr + u) * -_LOG2E
        if K > 1:
            t += z1 * _folded_weight(w1_ptr, u, 1, K)
        if K > 2:
            t += z2 * _folded_weight(w1_ptr, u, 2, K)
        if K > 3:
            t += z3 * _folded_weight(w1_ptr, u, 3, K)
        for k in tl.static_range(4, K):
            zk, _ = _column(z_ptr, offsets, row_mask, mean_ptr, std_ptr, k, STANDARDIZE)
            t += zk * _folded_weight(w1_ptr, u, k, K)
        hidden = tl.fdiv(tl.full(t.shape, 1.0, tl.float32), 1.0 + tl.exp2(t))
        score += tl.maximum(tl.load(w2_ptr + u), 0.0) * hidden
    tl.store(out_ptr + rows, score + tl.load(b2_ptr), mask=row_mask)
    tl.atomic_or(flags_ptr, flags, mask=flags != 0)


# Rows per program and warps; TUNED_CONFIG replaces it when set (benchmarks/gpu/gpu_bench.py sweeps it).
TUNED_CONFIG: dict | None = None


def launch_config() -> dict:
    # the fastest of gpu_bench.py's sweep on an H100 (benchmarks/results/gpu/h100/run3-mlp-gpu-bench.json:
    # 44 us for N=1M, 2 -> 64 -> 1; 128 rows 54 us, 512 rows 48 us, 1024 rows x 8 warps 51 us)
    return dict(TUNED_CONFIG) if TUNED_CONFIG is not None else dict(BLOCK_ROWS=256, num_warps=4)


def _launch(kernel, z, w1, b1, w2, b2, mean, std, standardize, out, flags) -> None:
    config = launch_config()
    kernel[(triton.cdiv(z.shape[0], config["BLOCK_ROWS"]),)](
        z, mean, std, w1, b1, w2, b2, out, flags, z.shape[0], z.stride(0),
        K=z.shape[1], K_PAD=triton.next_power_of_2(z.shape[1]), HIDDEN=w1.shape[0],
        HIDDEN_PAD=triton.next_power_of_2(w1.shape[0]), STANDARDIZE=standardize, **config)


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
