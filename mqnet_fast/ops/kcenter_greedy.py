"""kcenter_greedy: CORESET's farthest-first traversal (Sener & Savarese, ICLR 2018), in one process
(backends below) or across the ranks of a process group (`sharded`)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist

from mqnet_fast import _checks as checks
from mqnet_fast import _triton, reference
from mqnet_fast._library import has_compiled
from mqnet_fast.ops._backends import Backends, resolve, storage_dtype
from mqnet_fast.ops._collectives import (agree, all_reduce, best_pair, broadcast, device_of, gathered_offsets,
                                         owner_of, size_and_rank)

# Every backend; the Triton kernel takes float64 too (the others widen half precision to float32).
TABLE = Backends("kcenter_greedy")


class KCenterResult(NamedTuple):
    indices: torch.Tensor   #: (budget,) int64, the picks in pick order
    radii: torch.Tensor     #: (budget,) covering radius just before each pick (its distance to the centers)
    min_dist: torch.Tensor  #: (N,) final distance of every row to its nearest center


def kcenter_greedy(x: torch.Tensor, labeled, budget: int, *, exclude=None,
                   backend: str = "auto", group=None) -> KCenterResult:
    """k-center greedy (CORESET's farthest-first traversal) in Euclidean distance.

    Args:
        x: (N, d) float embeddings (float32/float64; half precision is computed in float32).
        labeled: (L,) int indices of the rows already labeled (initial centers), as a tensor, list,
            range or NumPy array; may be empty or None.
        budget: number of rows to pick, at most the rows neither labeled nor excluded.
        exclude: rows never picked, as indices or an (N,) bool mask, in any of labeled's forms (their
            distances are still tracked).

    Math: picks one at a time the eligible row i maximizing min_{c in centers} |x_i - x_c|, which then
    becomes a center; ties go to the lowest index (so with all remaining radii 0, as with duplicate
    rows, the lowest remaining row; with no center at all, the lowest eligible row, radius inf).

    Returns: KCenterResult(indices (budget,) int64, radii (budget,), min_dist (N,)), radii and min_dist
    in the compute dtype.

    The compiled kernel uses O(N) memory beyond x and skips, by the triangle inequality, the rows a
    new center cannot improve (exact; see csrc/cpu/kcenter_greedy.cpp).

    Across processes: with `group` (a torch.distributed process group; torch.distributed.group.WORLD
    for all of them) every rank calls it with its own contiguous shard of the pool's rows, in rank
    order; `labeled` then names global rows (the same on every rank) and `exclude` rows of the
    caller's shard. The picks and radii, the same on every rank, are the single-process reference's
    on the concatenated pool; min_dist is this rank's rows' (`sharded`; mqnet_fast.distributed says
    what moves).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [5.0], [2.0]])
        >>> kcenter_greedy(x, [0], 2).indices
        tensor([2, 3])
    """
    if group is not None:
        if backend not in ("auto", "torch"):
            raise ValueError(f"kcenter_greedy: across processes (group=) every rank runs the plain-PyTorch variant on its "
                             f"shard; backend must be 'auto' or 'torch', got {backend!r}")
        return sharded(x, labeled, budget, exclude=exclude, group=group)

    checks.tensors(x=x)
    device = checks.same_device(x=x, labeled=labeled, exclude=exclude)
    checks.copy_memory("x", x, checks.compute_dtype(x))  # before reading the values: an expanded x is cheap to hold
    x = checks.matrix("x", x, products=1)
    n = x.shape[0]
    labeled = checks.indices("labeled", labeled, n, device)
    excluded = checks.row_mask("exclude", exclude, n, device)
    blocked = excluded.clone()
    blocked[labeled] = True
    available = n - int(blocked.sum())
    budget = checks.count("budget", budget, high=available,
                          what=f"the {available} rows that are neither labeled nor excluded")
    chosen = resolve(TABLE, backend, device, checks.compute_dtype(x))
    if chosen == "triton":
        return KCenterResult(*_triton.kernel_module("kcenter_greedy").kcenter_greedy(
            x.to(storage_dtype(x)), labeled, budget, excluded))
    if chosen == "cuda":
        return KCenterResult(*torch.ops.mqnet_fast.kcenter_greedy(x.to(storage_dtype(x)), labeled, budget, excluded))
    x = x.to(checks.compute_dtype(x))
    if chosen == "torch":
        return KCenterResult(*reference.kcenter_greedy(x, labeled, budget, excluded))
    return KCenterResult(*torch.ops.mqnet_fast.kcenter_greedy(x, labeled, budget, excluded))


# ---------------------------------------------------------------------------------------------------
# Across processes


class _Distances:
    """|x_i - c|^2 for this rank's rows by the reference's expression ((x - c) ** 2).sum(1), the same
    bits, but in row chunks through one reused buffer: a fresh n_r x d temporary per pick costs more
    in page faults than the arithmetic."""

    CHUNK = 4096

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.buffer = torch.empty(min(self.CHUNK, x.shape[0]), x.shape[1], dtype=x.dtype, device=x.device)
        self.out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)

    def __call__(self, center: torch.Tensor) -> torch.Tensor:
        for start in range(0, self.x.shape[0], self.CHUNK):
            rows = self.x[start:start + self.CHUNK]
            buffer = self.buffer[:rows.shape[0]]
            torch.sub(rows, center, out=buffer)
            torch.pow(buffer, 2, out=buffer)
            torch.sum(buffer, 1, out=self.out[start:start + rows.shape[0]])
        return self.out


_LOW32 = (1 << 32) - 1


def _best_float32(local_value: float, local_index: int, device, group) -> tuple[float, int]:
    """best_pair for float32 values >= 0 (or +inf) and fewer than 2^32 rows, in one max all-reduce of 8
    bytes: a non-negative float32's bits order as its value, so (bits << 32) | (2^32 - 1 - index)
    is largest for the largest value and, among equal values, the lowest index; -1 (below every
    packed pair) stands for a rank without a candidate."""
    if local_index < 0:
        packed = -1
    else:
        bits = int(torch.tensor(local_value, dtype=torch.float32).view(torch.int32))
        packed = (bits << 32) | (_LOW32 - local_index)
    best = int(all_reduce(torch.tensor([packed], dtype=torch.long, device=device), dist.ReduceOp.MAX, group))
    if best < 0:
        return -math.inf, -1
    value = float(torch.tensor(best >> 32, dtype=torch.int32).view(torch.float32))
    return value, _LOW32 - (best & _LOW32)


def _gather_rows(x: torch.Tensor, rows_global: torch.Tensor, offsets: list[int], rank: int, group) -> torch.Tensor:
    """The rows `rows_global` (the same on every rank) of the sharded x, on every rank, in that order:
    each owner fills its rows and a sum all-reduce assembles them (L x d: the labeled set)."""
    out = torch.zeros(rows_global.numel(), x.shape[1], dtype=x.dtype, device=x.device)
    mine = (rows_global >= offsets[rank]) & (rows_global < offsets[rank + 1])
    out[mine] = x[rows_global[mine] - offsets[rank]]
    return all_reduce(out, dist.ReduceOp.SUM, group)


def sharded(x: torch.Tensor, labeled, budget: int, *, exclude=None, group=None) -> KCenterResult:
    """ops.kcenter_greedy over the pool sharded by rank: `x` (n_r, d) this rank's rows; `labeled`
    (L,) global row indices of the labeled rows (the same on every rank); `exclude` rows of this
    rank's shard never picked (shard indices or an (n_r,) bool mask). Returns (indices (budget,)
    global, in pick order, and radii (budget,), the same on every rank; min_dist (n_r,) of this
    rank's rows): the picks of the single-process reference on the concatenated pool."""
    world, rank = size_and_rank(group)
    device = device_of(x)
    state = {}

    def check():
        checks.tensors(x=x)
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (rows x features), got shape {tuple(x.shape)}")
        state["x"] = checks.matrix("x", x, allow_empty=True).to(checks.compute_dtype(x))
        state["excluded"] = checks.row_mask("exclude", exclude, x.shape[0], device)

    agree(check, group, device)
    x, excluded = state["x"], state["excluded"]
    n_local = x.shape[0]
    offsets = gathered_offsets(n_local, device, group, width=x.shape[1], dtype=x.dtype)
    labeled = checks.indices("labeled", labeled, offsets[-1], device)  # the same on every rank
    eligible = ~excluded
    mine = (labeled >= offsets[rank]) & (labeled < offsets[rank + 1])
    eligible[labeled[mine] - offsets[rank]] = False
    available = int(all_reduce(eligible.sum().view(1).long(), dist.ReduceOp.SUM, group))
    budget = checks.count("budget", budget, high=available,
                          what=f"the {available} rows that are neither labeled nor excluded")
    min_d2 = torch.full((n_local,), math.inf, dtype=x.dtype, device=device)
    distances = _Distances(x)
    for center in _gather_rows(x, labeled, offsets, rank, group):
        torch.minimum(min_d2, distances(center), out=min_d2)  # min is exact: any order
    # float32 radii and the index pack into one int64 max all-reduce; float64 gathers the pairs
    best_of = _best_float32 if x.dtype == torch.float32 and offsets[-1] < _LOW32 else best_pair
    picks, radii = [], []
    minus_inf = torch.tensor(-math.inf, dtype=x.dtype, device=device)
    for _ in range(budget):
        value, index = -math.inf, -1
        if n_local:
            masked = torch.where(eligible, min_d2, minus_inf)
            local = int(torch.argmax(masked))  # the first maximum of the shard
            if bool(eligible[local]):
                value, index = float(masked[local]), offsets[rank] + local
        best_value, best = best_of(value, index, device, group)
        owner = owner_of(best, offsets)
        row = (x[best - offsets[rank]].clone() if owner == rank
               else torch.empty(x.shape[1], dtype=x.dtype, device=device))
        row = broadcast(row, owner, group)
        if owner == rank:
            eligible[best - offsets[rank]] = False
        picks.append(best)
        # torch's sqrt, as the reference takes it (on the CPU it is not always correctly rounded)
        radii.append(torch.tensor(best_value, dtype=x.dtype, device=device).sqrt())
        torch.minimum(min_d2, distances(row), out=min_d2)
    radii = torch.stack(radii) if radii else torch.empty(0, dtype=x.dtype, device=device)
    return KCenterResult(torch.tensor(picks, dtype=torch.long, device=device), radii, min_d2.sqrt())


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::kcenter_greedy")
    def _(x, labeled, budget, excluded):
        n = x.shape[0]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # half x: float32 distances
        return (x.new_empty((budget,), dtype=torch.long), x.new_empty((budget,), dtype=dtype),
                x.new_empty((n,), dtype=dtype))


if has_compiled():
    _register_fake()
