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
The labeled centers enter first (`_init_from_labeled`: a float32 GEMM narrows each row's labeled
centers to the few within its rounding bound of the row's smallest value, and the exact distance to
each of those, computed by the same code as a pick's, decides; float64 makes one update pass per
center).
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

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch.library import custom_op

# Pruning is off unless asked for: its cost where nothing prunes (the GPU benchmark's Gaussian data)
# and its gain on clustered embeddings have not been timed on a GPU yet (benchmarks/gpu/gpu_bench.py
# times both); the CPU kernel prunes adaptively.
PRUNE_BY_DEFAULT = False


@triton.jit
def _squared_distances(x_ptr, rows, row_mask, center, dim, stride_x, ROW_CENTERS: tl.constexpr,
                       ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """|x_r - x_center|^2 (BLOCK_N,) in ACC for the rows where row_mask holds (0 elsewhere, not read).
    center: one row index, or with ROW_CENTERS one per row (the labeled init's pairs). Either way a row's
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
                          n, dim, stride_x, HAS_CENTER: tl.constexpr,
                          PRUNE: tl.constexpr, COUNT_SKIPPED: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    min_d2 = tl.load(min_d2_ptr + rows, mask=row_mask, other=0.0)
    if HAS_CENTER:
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
        dist = _squared_distances(x_ptr, rows, needed, center, dim, stride_x, False, ACC, BLOCK_N, BLOCK_D)
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
def _pair_distances_kernel(x_ptr, rows_ptr, centers_ptr, out_ptr, n_pairs, dim, stride_x,
                           ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[p] = |x_rows[p] - x_centers[p]|^2 for p < n_pairs (the labeled init's candidates), by the
    same `_squared_distances` (and block shape) as a pick's update: the same bits for a row."""
    positions = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = positions < n_pairs
    rows = tl.load(rows_ptr + positions, mask=mask, other=0)
    centers = tl.load(centers_ptr + positions, mask=mask, other=0)
    dist = _squared_distances(x_ptr, rows, mask, centers, dim, stride_x, True, ACC, BLOCK_N, BLOCK_D)
    tl.store(out_ptr + positions, dist, mask=mask)


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


# Entries of one row-chunk x centers tile of the labeled init's GEMM (float32: 64 MiB; the candidate
# list of a chunk where no center can be told apart is at most 16 bytes per entry).
_INIT_TILE = 1 << 24


@contextlib.contextmanager
def _ieee_float32_matmul():
    """float32 matmuls in full float32 (no TF32 on CUDA, no bf16 on oneDNN) for the block: the
    init's bound is float32's. The setting is process-wide; the previous one is restored."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _init_from_labeled(x: torch.Tensor, labeled: torch.Tensor, min_d2: torch.Tensor,
                       assign: torch.Tensor | None, block_n: int, block_d: int) -> None:
    """min_d2[i] = min_j |x_i - x_labeled[j]|^2, each distance computed by the pick's arithmetic (so
    the init, the per-pick updates and the reference's definition agree), and assign[i] the first
    position j that attains it; a labeled row gets 0 and its own position. Float32 accumulation
    (bf16/fp16 rows widened), as the update kernel's.

    The GEMM expansion |a|^2 + |b|^2 - 2 a.b on mean-centred rows narrows the centers, in chunks of
    rows; it does not decide. Its error is absolute (eps (|a| + |b|)^2, not eps |a - b|^2), so where
    the centred norms dwarf the distances (a tight cluster far from the pool's mean) it cannot rank
    the centers: the nearest kernel's argmin gave rows up to 3.9x the nearest center's distance.
    The test keeps every center that can be the exact minimum, as the CPU kernel's does
    (csrc/cpu/kcenter_greedy.cpp, init_from_labeled). Let a, b_j be the centred rows as rounded (the
    mean cancels, whatever its value, so only their rounding counts) and t_j = |x - c_j|^2. The
    expansion's value v_j is within E = (d + 5) eps (|a| + |b_j|)^2 of t_j (gamma_d for each norm
    and the dot, in any summation order, 2 eps for rounding the centred rows, 2 eps for the two
    final adds); the difference form s_j (the kernel's, any order) is within g = (d + 2) eps of t_j,
    relatively. With V the row's smallest v (from center m), s_min <= s_m <= (1 + g)(V + E) and so
    v_j* <= (V + E)(1 + 3g) + E for the exact minimizer j* (g small). As on the CPU the test doubles
    E (it is formed from the computed norms, and |b_j| <= max |b|) and takes 4g; the threshold is
    formed in float64 and rounded up to float32, and a NaN v (overflow) counts as a candidate.
    Candidates are usually the argmin alone; each (row, candidate) pair's distance comes from
    `_pair_distances_kernel`, so the cost beyond the GEMM is one read of x plus the ambiguous pairs,
    not a pass over x per center. (On CPU tensors: 1.003 pairs per row on a Gaussian pool, 3,000 x 64
    with 200 labeled; the rows of a spread far from a labeled cluster keep every center. Not yet
    timed on a GPU: the float32 GEMM without TF32 is 2 N d L flops, ~0.1 s for 1.28M x 2048 x 1,000
    at H200's float32 rate, against ~1 s of memory traffic for a pass per center.)"""
    n, dim = x.shape
    n_labeled = labeled.numel()
    acc = torch.float32
    eps = torch.finfo(acc).eps
    expansion_err = 2 * (dim + 5) * eps
    exact_err = 4 * (dim + 2) * eps
    mean = torch.mean(x, 0, dtype=acc)
    b = x[labeled].to(acc) - mean
    b_norms = (b * b).sum(1)
    b_max = math.sqrt(b_norms.max().item())
    chunk = max(1, min(n, _INIT_TILE // n_labeled))
    positions = torch.arange(n_labeled, device=x.device)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        a = x[r0:r1].to(acc) - mean
        a_norms = (a * a).sum(1)
        with _ieee_float32_matmul():
            v = torch.matmul(a, b.T)
        v.mul_(-2).add_(a_norms[:, None]).add_(b_norms[None, :])  # |a|^2 + |b|^2 - 2 a.b, two adds
        best = v.amin(1).double()
        reach = a_norms.double().sqrt() + b_max
        err = expansion_err * reach * reach
        bound = (best + err) * (1 + exact_err) + err
        threshold = bound.to(acc)
        threshold = torch.where(threshold.double() < bound, torch.nextafter(threshold, threshold.new_tensor(math.inf)),
                                threshold)
        local, which = torch.nonzero(~(v > threshold[:, None]), as_tuple=True)
        del v
        rows = local + r0
        dist = torch.empty(rows.numel(), dtype=acc, device=x.device)
        if rows.numel():
            _pair_distances_kernel[(triton.cdiv(rows.numel(), block_n),)](
                x, rows, labeled[which], dist, rows.numel(), dim, x.stride(0),
                ACC=tl.float32, BLOCK_N=block_n, BLOCK_D=block_d)
        nearest = torch.full((r1 - r0,), math.inf, dtype=acc, device=x.device)
        nearest.scatter_reduce_(0, local, dist, "amin")
        min_d2[r0:r1] = nearest
        if assign is not None:  # the lowest position at the minimum, as the CPU kernel's strict <
            first = torch.full((r1 - r0,), n_labeled, dtype=torch.int64, device=x.device)
            at_min = dist == nearest[local]
            first.scatter_reduce_(0, local[at_min], which[at_min], "amin")
            assign[r0:r1] = first.to(assign.dtype)
    min_d2[labeled] = 0  # a center is at distance 0, exactly (its own pair is always a candidate)
    if assign is not None:
        assign[labeled] = positions.to(assign.dtype)


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

    def update(position: int | None, skipped_slot: torch.Tensor | None = None):
        """Lowers min_d2 with the center at centers[position] (None: only the block maxima)."""
        center = centers[position:position + 1] if position is not None else centers
        if prune and position:  # position > 0: there are earlier centers to test against
            _center_distances_kernel[(triton.cdiv(position, block_n),)](
                x, centers, center, center_d2, position, dim, x.stride(0), ACC=acc, BLOCK_N=block_n, BLOCK_D=block_d)
        _update_argmax_kernel[(n_blocks,)](
            x, center, min_d2, eligible, block_val, block_idx, assign if prune else min_d2,
            center_d2 if prune else min_d2, skipped_slot if skipped_slot is not None else block_idx,
            position or 0, delta, n, dim, x.stride(0),
            HAS_CENTER=position is not None,
            PRUNE=prune and position is not None, COUNT_SKIPPED=skipped_slot is not None,
            ACC=acc, BLOCK_N=block_n, BLOCK_D=block_d)

    if n_labeled > 0 and x.dtype != torch.float64:
        _init_from_labeled(x, labeled, min_d2, assign, block_n, block_d)
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
