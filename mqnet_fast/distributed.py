"""The selection ops over a pool sharded across the ranks of a torch.distributed process group.

Each rank holds a contiguous shard of the pool, in rank order (rank 0 the first rows): the
concatenation of the shards is the pool the single-process op would see, and row indices in and out
are global rows of it (except `exclude`, which names rows of the caller's own shard). Per pick only
the winner's row (O(d) bytes) and O(W) bytes of candidates move; the pool's other rows never leave
their rank (k-center's labeled rows, L x d, are gathered once per call). Launch with torchrun
(NCCL on GPUs: call torch.cuda.set_device(LOCAL_RANK) first; gloo on CPUs); every function is a
collective that every rank of `group` calls, with its own shard. An argument refused on one rank
is refused on every rank (no rank is left waiting in a collective). What moves, per op::

    kcenter_greedy   per pick: one max all-reduce of each shard's (max radius, lowest global index),
                     packed into an int64 in float32 (an all-gather of the pairs in float64), then
                     the winner's row broadcast by its owner.
    badge_kmeanspp   per pick: the float64 cumulative D^2 sums chained rank to rank (each rank
                     continues the previous rank's running sum, so they are the single-process
                     sums), the total broadcast, one draw from the shared generator, an all-reduce
                     of the first row past it, the winner's (a, h, G) broadcast.
    nearest          queries stay local; the keys are all-gathered once (or given whole).
    top_b            local top b, an all-gather of b (score, index) pairs, the global top b.

Bytes per pick are in docs/distributed.md (measured by benchmarks/ops/distributed_bench.py). The per-row
arithmetic is that of the plain-PyTorch references in mqnet_fast.reference, and the selection rules
(first maximum, ties to the lowest global index, the inverse-CDF draw and its fallbacks) are theirs:
on the CPU every op gives exactly the single-process reference's picks (backend="torch") on the
concatenated pool, as tests/test_distributed.py checks with 2 and 3 gloo processes. On CUDA a row's
reduction may round differently with its shard's size (not checked on a GPU yet).
`bytes_communicated()` counts what the calls here sent and received on this rank.

Each function here is its op with `group` (ops.kcenter_greedy(..., group=...), the variant in the
op's own module, mqnet_fast/ops/<op>.py); `group=None` here is every process of the job
(torch.distributed.group.WORLD), where the ops' `group=None` is one process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from mqnet_fast import ops
from mqnet_fast.ops import KCenterResult
from mqnet_fast.ops._collectives import all_gather_rows, bytes_communicated, gathered_offsets


def _group(group):
    if group is None and not dist.is_initialized():
        raise ValueError("Default process group has not been initialized, please make sure to call init_process_group.")
    return group if group is not None else dist.group.WORLD


def kcenter_greedy(x: torch.Tensor, labeled, budget: int, *, exclude=None, group=None) -> KCenterResult:
    """ops.kcenter_greedy over the pool sharded by rank: `x` (n_r, d) this rank's rows; `labeled`
    (L,) global row indices of the labeled rows (the same on every rank); `exclude` rows of this
    rank's shard never picked (shard indices or an (n_r,) bool mask). Returns (indices (budget,)
    global, in pick order, and radii (budget,), the same on every rank; min_dist (n_r,) of this
    rank's rows): the picks of the single-process reference on the concatenated pool."""
    return ops.kcenter_greedy(x, labeled, budget, exclude=exclude, group=_group(group))


def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, *, generator: torch.Generator,
                   group=None) -> torch.Tensor:
    """ops.badge_kmeanspp over the pool sharded by rank: `probs` (n_r, C) and `feats` (n_r, d) this
    rank's rows; `generator` a CPU generator in the same state on every rank (its k - 1 float64
    uniforms are the single-process op's; required, as each rank's global RNG would draw its own).
    Returns the k global picks, the same on every rank."""
    return ops.badge_kmeanspp(probs, feats, k, generator=generator, group=_group(group))


def nearest(queries: torch.Tensor, keys: torch.Tensor, *, metric: str = "cosine", keys_sharded: bool = True,
            group=None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """ops.nearest for this rank's queries against the keys of every rank (`keys_sharded`: each rank
    passes its shard, in rank order; else every rank passes all keys). Returns this rank's (values,
    global key indices)."""
    return ops.nearest(queries, keys, metric=metric, keys_sharded=keys_sharded, group=_group(group), backend=backend)


def top_b(scores: torch.Tensor, b: int, *, group=None) -> torch.Tensor:
    """ops.top_b over the scores of every rank's shard: the b largest, highest first, ties to the
    lowest global index; (b,) global indices, the same on every rank."""
    return ops.top_b(scores, b, group=_group(group))


__all__ = ["all_gather_rows", "badge_kmeanspp", "bytes_communicated", "gathered_offsets", "kcenter_greedy", "nearest",
           "top_b"]
