"""Triton: k-center greedy (farthest-first traversal) with no host synchronization per pick.

State on the device: min_d2 (N,) the squared distance of each row to its nearest center, and
eligible (N,) int8. Each pick is two launches:
  1. `_update_argmax_kernel` over the whole pool (one program per BLOCK_N rows): reads the newest
     center's index from device memory, lowers min_d2 with the exact difference-form distance
     sum_j (x_ij - c_j)^2 (accumulated in float32, or float64 for float64 input; bf16/fp16 rows are
     widened on load), and writes each block's best eligible (value, index);
  2. `_pick_kernel` (one program) reduces the block results, writes the pick, its radius, and marks
     the row ineligible.
So the Python loop only enqueues kernels; the next update reads the pick the previous kernel wrote.
The labeled centers enter first (`_nearest_labeled`: the nearest-set kernel's GEMM picks each row's
nearest labeled center, then one update pass computes the exact distance to it with the same code as
a pick's; float64 makes one update pass per center).
Ties go to the lowest index (tl.argmax keeps the first maximum; blocks are reduced in index order
and a later block wins only when strictly larger), as in the reference.

Pruning (prune=True; exact, as on the CPU, see csrc/cpu/kcenter_greedy.cpp): each row also keeps
which center is its nearest (assign (N,) int32, a position in the list of centers: labeled rows,
then the picks). Before a pick's update, `_center_distances_kernel` computes D2[a] = |x_a - x_c|^2
from every center a to the new one c. A row with D2[assign] >= 4 min_d2 (1 + delta) cannot get
closer to c than to its center (triangle inequality, with delta = 4 (d + 2) eps covering the rounding
of both computed distances), so its row of x is not loaded: the masked-off loads cost no memory
traffic. Skipped rows keep min_d2 unchanged, which is what the unpruned update would have stored, so
prune=True gives bit-identical results. What it costs per pick where nothing prunes (Gaussian data):
one small kernel over the centers and 8 bytes per row (assign, and D2 gathered from a small array).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

# Pruning is off unless asked for: its cost where nothing prunes (the GPU benchmark's Gaussian data)
# and its gain on clustered embeddings have not been timed on a GPU yet (benchmarks/gpu_bench.py
# times both); the CPU kernel prunes adaptively.
PRUNE_BY_DEFAULT = False


@triton.jit
def _squared_distances(x_ptr, rows, row_mask, center, dim, stride_x, ROW_CENTERS: tl.constexpr,
                       ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """|x_r - x_center|^2 (BLOCK_N,) in ACC for the rows where row_mask holds (0 elsewhere, not read).
    center: one row index, or with ROW_CENTERS one per row (the labeled init). Either way a row's
    value is the same sum in the same order, whatever the row's place in the block or the grid: the
    labeled init and the per-pick updates agree, and identical rows get identical distances.
    Offsets are int64: row * stride_x passes 2^31 on pools of N * d >= 2^31 elements (1.05M x 2048),
    where int32 arithmetic wraps to an address outside x without an error."""
    dims = tl.arange(0, BLOCK_D)
    row_offsets = rows.to(tl.int64) * stride_x
    center_offsets = center.to(tl.int64) * stride_x
    acc = tl.zeros((BLOCK_N,), ACC)
    for start in range(0, dim, BLOCK_D):
        d_mask = (start + dims) < dim
        xb = tl.load(x_ptr + row_offsets[:, None] + (start + dims)[None, :],
                     mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(ACC)
        if ROW_CENTERS:
            c = tl.load(x_ptr + center_offsets[:, None] + (start + dims)[None, :],
                        mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(ACC)
            diff = xb - c
        else:
            c = tl.load(x_ptr + center_offsets + start + dims, mask=d_mask, other=0.0).to(ACC)
            diff = xb - c[None, :]
        acc += tl.sum(diff * diff, axis=1)
    return acc


@triton.jit
def _update_argmax_kernel(x_ptr, center_ptr, min_d2_ptr, eligible_ptr, block_val_ptr, block_idx_ptr,
                          assign_ptr, center_d2_ptr, skipped_ptr, new_center_pos, delta,
                          n, dim, stride_x, HAS_CENTER: tl.constexpr, ROW_CENTERS: tl.constexpr,
                          PRUNE: tl.constexpr, COUNT_SKIPPED: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    min_d2 = tl.load(min_d2_ptr + rows, mask=row_mask, other=0.0)
    if HAS_CENTER:
        if ROW_CENTERS:  # center_ptr holds a center row per row (the labeled init)
            center = tl.load(center_ptr + rows, mask=row_mask, other=0)
        else:
            center = tl.load(center_ptr)
        needed = row_mask
        if PRUNE:
            assigned = tl.load(assign_ptr + rows, mask=row_mask, other=-1)
            has_center = assigned >= 0
            center_d2 = tl.load(center_d2_ptr + assigned, mask=row_mask & has_center, other=0.0)
            # 4 min_d2 (1 + delta), formed so that a float64 min_d2 keeps delta (a float argument is
            # passed as float32, where 1 + delta rounds to 1 for float64's delta)
            needed = row_mask & (~has_center | (center_d2 < 4 * min_d2 + (4 * delta) * min_d2))
            if COUNT_SKIPPED:
                tl.atomic_add(skipped_ptr, tl.sum((row_mask & ~needed).to(tl.int64), axis=0))
        dist = _squared_distances(x_ptr, rows, needed, center, dim, stride_x, ROW_CENTERS, ACC, BLOCK_N, BLOCK_D)
        improved = needed & (dist < min_d2)
        min_d2 = tl.where(improved, dist, min_d2)
        tl.store(min_d2_ptr + rows, min_d2, mask=improved)
        if PRUNE:
            tl.store(assign_ptr + rows, tl.full((BLOCK_N,), new_center_pos, tl.int32), mask=improved)
    eligible = tl.load(eligible_ptr + rows, mask=row_mask, other=0) != 0
    candidate = tl.where(eligible & row_mask, min_d2, float("-inf"))
    tl.store(block_val_ptr + pid, tl.max(candidate, axis=0))
    tl.store(block_idx_ptr + pid, pid * BLOCK_N + tl.argmax(candidate, axis=0).to(tl.int64))


@triton.jit
def _center_distances_kernel(x_ptr, centers_ptr, center_ptr, center_d2_ptr, n_centers, dim, stride_x,
                             ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """center_d2[j] = |x_centers[j] - x_center|^2 for j < n_centers (the pruning test's D2)."""
    positions = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = positions < n_centers
    rows = tl.load(centers_ptr + positions, mask=mask, other=0)
    dist = _squared_distances(x_ptr, rows, mask, tl.load(center_ptr), dim, stride_x, False, ACC, BLOCK_N, BLOCK_D)
    tl.store(center_d2_ptr + positions, dist, mask=mask)


@triton.jit
def _pick_kernel(block_val_ptr, block_idx_ptr, n_blocks, eligible_ptr, picks_ptr, radii_ptr, step,
                 BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    best = tl.load(block_val_ptr + offsets, mask=offsets < n_blocks, other=float("-inf"))
    best_val = tl.max(best, axis=0)
    best_idx = tl.load(block_idx_ptr + tl.argmax(best, axis=0))
    for start in range(BLOCK, n_blocks, BLOCK):
        vals = tl.load(block_val_ptr + start + offsets, mask=start + offsets < n_blocks, other=float("-inf"))
        chunk_val = tl.max(vals, axis=0)
        chunk_idx = tl.load(block_idx_ptr + start + tl.argmax(vals, axis=0))
        better = chunk_val > best_val
        best_idx = tl.where(better, chunk_idx, best_idx)
        best_val = tl.where(better, chunk_val, best_val)
    tl.store(picks_ptr + step, best_idx)
    tl.store(radii_ptr + step, tl.sqrt(best_val))
    tl.store(eligible_ptr + best_idx, tl.zeros((), tl.int8))


def _nearest_labeled(x: torch.Tensor, labeled: torch.Tensor, assign: torch.Tensor | None) -> torch.Tensor:
    """The row of each row's nearest labeled center: a tensor-core GEMM with the argmin fused (the
    nearest-set kernel, l2) picks it; `run` then computes the exact difference-form distance to it
    with the update kernel, so the init and a pick's update give a row the same bits. The GEMM's
    expansion can only mistake one center for another within its rounding, and the stored distance
    is the exact one to the center it chose (which is all the pruning needs of `assign`, the chosen
    center's position in `labeled`). That rounding is absolute (eps |x|^2, not eps |x - c|^2): where
    the norms dwarf the distances (a tight cluster far from the origin) the choice can be a farther
    center. The CPU kernel keeps every center within the bound and decides by the exact distance;
    this one would need the nearest kernel to return those candidates. (One update pass per center
    took 0.25 s for 1,000 centers on 1M x 512 bf16 on an H200; a kernel taking 8 centers per pass
    0.42 s.)"""
    from mqnet_fast.kernels.nearest_triton import nearest

    # Triton's interpreter computes bf16 dots wrongly: widen there (tests only; GPUs use bf16 tiles)
    gemm_x = x if x.is_cuda else x.float()
    _, which = nearest(gemm_x, gemm_x[labeled], True)
    if assign is not None:
        assign.copy_(which)
    return labeled[which].contiguous()


def run(x: torch.Tensor, labeled: torch.Tensor, budget: int, excluded: torch.Tensor, prune: bool,
        skipped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The greedy loop (see kcenter_greedy). skipped: optional (budget,) int64 zeros on x's device;
    with prune=True, skipped[t] receives the number of rows whose read pick t's update skipped."""
    n, dim = x.shape
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    acc = tl.float64 if acc_dtype == torch.float64 else tl.float32
    if dim > 1 and x.stride(1) != 1:  # the kernels take any row stride (a view is read in place)
        x = x.contiguous()
    labeled = labeled.contiguous()
    n_labeled = labeled.shape[0]
    min_d2 = torch.full((n,), float("inf"), dtype=acc_dtype, device=x.device)
    eligible = (~excluded).to(torch.int8)
    eligible[labeled] = 0
    block_n = 64
    block_d = min(128, triton.next_power_of_2(max(dim, 1)))
    n_blocks = triton.cdiv(n, block_n)
    block_val = torch.empty(n_blocks, dtype=acc_dtype, device=x.device)
    block_idx = torch.empty(n_blocks, dtype=torch.int64, device=x.device)
    # centers = labeled rows, then the picks (picks is a view: the pick kernel appends to the list)
    centers = torch.empty(n_labeled + budget, dtype=torch.int64, device=x.device)
    centers[:n_labeled] = labeled
    picks = centers[n_labeled:]
    radii = torch.empty(budget, dtype=acc_dtype, device=x.device)
    if prune:
        assign = torch.full((n,), -1, dtype=torch.int32, device=x.device)
        center_d2 = torch.empty(n_labeled + budget, dtype=acc_dtype, device=x.device)
        delta = 4 * (dim + 2) * torch.finfo(acc_dtype).eps
    else:
        assign = center_d2 = None
        delta = 0.0
    count = prune and skipped is not None

    def update(position: int | None, skipped_slot: torch.Tensor | None = None,
               row_centers: torch.Tensor | None = None):
        """Lowers min_d2 with the center at centers[position] (None: only the block maxima), or
        with row_centers[i] for each row i (the labeled init: the same distance code as a pick's)."""
        if row_centers is not None:
            center = row_centers
        else:
            center = centers[position:position + 1] if position is not None else centers
        if prune and position:  # position > 0: there are earlier centers to test against
            _center_distances_kernel[(triton.cdiv(position, block_n),)](
                x, centers, center, center_d2, position, dim, x.stride(0), ACC=acc, BLOCK_N=block_n, BLOCK_D=block_d)
        _update_argmax_kernel[(n_blocks,)](
            x, center, min_d2, eligible, block_val, block_idx, assign if prune else min_d2,
            center_d2 if prune else min_d2, skipped_slot if skipped_slot is not None else block_idx,
            position or 0, delta, n, dim, x.stride(0),
            HAS_CENTER=position is not None or row_centers is not None, ROW_CENTERS=row_centers is not None,
            PRUNE=prune and position is not None, COUNT_SKIPPED=skipped_slot is not None,
            ACC=acc, BLOCK_N=block_n, BLOCK_D=block_d)

    if n_labeled > 0 and x.dtype != torch.float64:
        update(None, row_centers=_nearest_labeled(x, labeled, assign))
        min_d2[labeled] = 0  # a center is at distance 0 even where the GEMM chose another one
    else:  # float64 (no tensor-core path): one pass per labeled center
        for j in range(n_labeled):
            update(j)
    update(None)  # the block maxima of the initial state
    reduce_block = min(1024, triton.next_power_of_2(n_blocks))
    for step in range(budget):
        _pick_kernel[(1,)](block_val, block_idx, n_blocks, eligible, picks, radii, step, BLOCK=reduce_block)
        update(n_labeled + step, skipped[step:step + 1] if count else None)
    return picks, radii, min_d2.sqrt()


@custom_op("mqnet_fast_triton::kcenter_greedy", mutates_args=())
def kcenter_greedy(x: torch.Tensor, labeled: torch.Tensor, budget: int, excluded: torch.Tensor,
                   prune: bool = PRUNE_BY_DEFAULT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, d) float32/float64/bfloat16/float16; labeled (L,) int64; excluded (N,) bool.
    Returns (picks (budget,) int64, radii (budget,), min_dist (N,)) in float32 (float64 for
    float64 x). The caller has checked that `budget` eligible rows exist. prune: skip the rows the
    new center cannot improve (exact; same results)."""
    picks, radii, min_dist = run(x, labeled, budget, excluded, prune)
    return picks.clone(), radii, min_dist


@kcenter_greedy.register_fake
def _(x, labeled, budget, excluded, prune=PRUNE_BY_DEFAULT):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.new_empty(budget, dtype=torch.int64), x.new_empty(budget, dtype=dtype),
            x.new_empty(x.shape[0], dtype=dtype))
