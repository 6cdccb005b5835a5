"""The selection ops over a pool sharded across the ranks of a torch.distributed process group.

Each rank holds a contiguous shard of the pool, in rank order (rank 0 the first rows): the
concatenation of the shards is the pool the single-process op would see, and indices in and out are
global rows of it. No rank ever holds another rank's rows; per pick only O(d) bytes move (the
winner's row) plus O(world size) bytes of candidates. Launch with torchrun (NCCL on GPUs, gloo on
CPUs); every function is a collective: every rank of `group` calls it with the same arguments
except its own shard.

    kcenter_greedy   per pick: an all-gather of each shard's (max radius, lowest global index), then
                     the winner's row broadcast by its owner; initial distances to the labeled set
                     shard-locally.                                    bytes/pick: 16 W + d e
    badge_kmeanspp   per pick: an all-gather of the shards' float64 D^2 sums, one draw from the
                     shared generator, an all-reduce of the first row past it, the winner's (a, h, G)
                     broadcast.                                   bytes/pick: 8 W + 16 + (C + d + 1) e
    nearest          queries stay local; the keys are all-gathered once (or given whole).
    top_b            local top b, an all-gather of b (score, index) pairs, the global top b.

(W the world size, e the element size, d the feature width, C the classes.) The per-row arithmetic is
that of the plain-PyTorch references in mqnet_fast.reference, and the selection rules (ties to the
lowest global index, first maximum, inverse-CDF draw) are theirs:
- kcenter_greedy and top_b give exactly the single-process reference's picks (a row's distance does
  not depend on which shard holds it; maxima and ties are resolved globally).
- badge_kmeanspp: the draw compares u x total with float64 cumulative D^2 sums, whose association
  differs from one sequential sum over the pool (each rank sums its shard, then the shard sums are
  added in rank order). A pick can differ from the single-process one only where u x total falls
  within float64 rounding (about 1e-16 relative) of a row's cumulative boundary.
`bytes_communicated()` counts what the calls here sent and received on this rank.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from mqnet_fast import _checks as checks
from mqnet_fast import ops
from mqnet_fast.reference.badge_kmeanspp import gradient_factors, sqdist_to
from mqnet_fast.reference.kcenter_greedy import squared_distances
from mqnet_fast.ops import KCenterResult

_BYTES = {"sent": 0, "received": 0}


def bytes_communicated(reset: bool = False) -> dict[str, int]:
    """Bytes this rank sent and received through this module's collectives since the last reset (a
    broadcast counts its payload once on every rank; an all-gather W - 1 pieces received, one sent
    to each other rank)."""
    out = dict(_BYTES)
    if reset:
        _BYTES["sent"] = _BYTES["received"] = 0
    return out


def _world(group):
    return dist.get_world_size(group), dist.get_rank(group)


def _all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    world, _ = _world(group)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous(), group=group)
    size = t.numel() * t.element_size()
    _BYTES["sent"] += size * (world - 1)
    _BYTES["received"] += size * (world - 1)
    return out


def _broadcast(t: torch.Tensor, src: int, group) -> torch.Tensor:
    t = t.contiguous()
    dist.broadcast(t, src=dist.get_global_rank(group, src) if group is not None else src, group=group)
    size = t.numel() * t.element_size()
    _BYTES["sent" if dist.get_rank(group) == src else "received"] += size
    return t


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    dist.all_reduce(t, op=op, group=group)
    size = t.numel() * t.element_size()
    _BYTES["sent"] += size
    _BYTES["received"] += size
    return t


def shard_offsets(n_local: int, device: torch.device, group=None) -> list[int]:
    """The global row where each rank's shard starts, and the pool size last ((W + 1,) ints)."""
    sizes = _all_gather(torch.tensor([n_local], dtype=torch.long, device=device), group)
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + int(s))
    return offsets


def _owner(index: int, offsets: list[int]) -> int:
    for rank in range(len(offsets) - 1):
        if offsets[rank] <= index < offsets[rank + 1]:
            return rank
    raise IndexError(f"row {index} is outside the pool of {offsets[-1]} rows")


def _best(local_value: torch.Tensor, local_index: int, group) -> tuple[float, int]:
    """The global (max value, lowest global index at it) from each rank's candidate (value -inf and
    index -1 for a rank without one)."""
    pair = torch.tensor([float(local_value), float(local_index)], dtype=torch.float64, device=local_value.device)
    best_value, best_index = -math.inf, -1
    for candidate in _all_gather(pair, group):
        value, index = float(candidate[0]), int(candidate[1])
        if index < 0:
            continue
        if value > best_value or (value == best_value and (best_index < 0 or index < best_index)):
            best_value, best_index = value, index
    return best_value, best_index


def _gather_rows(x: torch.Tensor, rows_global: torch.Tensor, offsets: list[int], rank: int, group) -> torch.Tensor:
    """The rows `rows_global` (the same on every rank) of the sharded x, on every rank, in that order:
    each owner fills its rows and a sum all-reduce assembles them (L x d; the labeled set)."""
    out = torch.zeros(rows_global.numel(), x.shape[1], dtype=x.dtype, device=x.device)
    mine = (rows_global >= offsets[rank]) & (rows_global < offsets[rank + 1])
    out[mine] = x[rows_global[mine] - offsets[rank]]
    return _all_reduce(out, dist.ReduceOp.SUM, group)


def kcenter_greedy(x: torch.Tensor, labeled, budget: int, *, exclude=None, group=None) -> KCenterResult:
    """ops.kcenter_greedy over the pool sharded by rank: `x` (n_r, d) this rank's rows; `labeled`
    (L,) global row indices of the labeled rows (the same on every rank); `exclude` this rank's
    rows never picked (indices into the shard or an (n_r,) bool mask). Returns (indices (budget,)
    global, in pick order, and radii (budget,), the same on every rank; min_dist (n_r,) of this
    rank's rows), the picks of the single-process reference on the concatenated pool."""
    world, rank = _world(group)
    checks.tensors(x=x)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (rows x features), got shape {tuple(x.shape)}")
    x = x.to(checks.compute_dtype(x)) if x.dtype.is_floating_point else x
    checks.matrix("x", x, allow_empty=True)
    n_local, device = x.shape[0], x.device
    offsets = shard_offsets(n_local, device, group)
    n = offsets[-1]
    labeled = checks.indices("labeled", labeled, n, device)
    excluded = checks.row_mask("exclude", exclude, n_local, device)
    eligible = ~excluded
    mine = (labeled >= offsets[rank]) & (labeled < offsets[rank + 1])
    eligible[labeled[mine] - offsets[rank]] = False
    available = int(_all_reduce(eligible.sum().view(1).long(), dist.ReduceOp.SUM, group))
    budget = checks.count("budget", budget, high=available,
                          what=f"the {available} rows that are neither labeled nor excluded")
    min_d2 = torch.full((n_local,), math.inf, dtype=x.dtype, device=device)
    centers = _gather_rows(x, labeled, offsets, rank, group)
    for center in centers:  # shard-local: the reference's sequential minimum (order-free: min is exact)
        min_d2 = torch.minimum(min_d2, squared_distances(x, center))
    picks, radii = [], []
    minus_inf = torch.tensor(-math.inf, dtype=x.dtype, device=device)
    for _ in range(budget):
        if eligible.any():
            masked = torch.where(eligible, min_d2, minus_inf)
            local = int(torch.argmax(masked))  # the first maximum of the shard
            value, index = masked[local], offsets[rank] + local
        else:
            value, index = minus_inf, -1
        best_value, best = _best(value, index, group)
        owner = _owner(best, offsets)
        row = x[best - offsets[rank]].clone() if owner == rank else torch.empty(x.shape[1], dtype=x.dtype,
                                                                                  device=device)
        row = _broadcast(row, owner, group)
        if owner == rank:
            eligible[best - offsets[rank]] = False
        picks.append(best)
        # torch's sqrt, as the reference takes it (on the CPU it is not always correctly rounded)
        radii.append(torch.tensor(best_value, dtype=x.dtype, device=device).sqrt())
        min_d2 = torch.minimum(min_d2, squared_distances(x, row))
    radii = torch.stack(radii) if radii else torch.empty(0, dtype=x.dtype, device=device)
    return KCenterResult(torch.tensor(picks, dtype=torch.long, device=device), radii, min_d2.sqrt())


def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
                   group=None) -> torch.Tensor:
    """ops.badge_kmeanspp over the pool sharded by rank: `probs` (n_r, C) and `feats` (n_r, d) this
    rank's rows; `generator` a CPU generator in the same state on every rank (its k - 1 float64
    uniforms are the single-process op's). Returns the k global picks, the same on every rank."""
    world, rank = _world(group)
    checks.tensors(probs=probs, feats=feats)
    if probs.dim() != 2 or feats.dim() != 2 or probs.shape[0] != feats.shape[0]:
        raise ValueError(f"probs (n, C) and feats (n, d) must be 2-D with the same rows, got {tuple(probs.shape)} "
                         f"and {tuple(feats.shape)}")
    dtype = torch.promote_types(checks.compute_dtype(probs), checks.compute_dtype(feats))
    probs, feats = probs.to(dtype), feats.to(dtype)
    n_local, device = probs.shape[0], probs.device
    offsets = shard_offsets(n_local, device, group)
    k = checks.count("k", k, high=offsets[-1], what=f"the {offsets[-1]} rows of the pool")
    uniforms = torch.rand(max(k - 1, 0), generator=generator, dtype=torch.float64)
    a, g = gradient_factors(probs, feats)
    d2 = torch.full((n_local,), math.inf, dtype=dtype, device=device)
    picked = torch.zeros(n_local, dtype=torch.bool, device=device)
    big = torch.iinfo(torch.long).max
    picks = []
    for step in range(k):
        if step == 0:
            local = int(torch.argmax(g)) if n_local else -1
            c = _best(g[local] if n_local else torch.tensor(-math.inf), offsets[rank] + local if n_local else -1,
                      group)[1]
        else:
            local_cum = torch.cumsum(d2.double(), 0)
            local_total = local_cum[-1:] if n_local else torch.zeros(1, dtype=torch.float64, device=device)
            totals = [float(t) for t in _all_gather(local_total, group)]
            prefix = 0.0
            for t in totals[:rank]:
                prefix += t
            total = 0.0
            for t in totals:
                total += t
            if total == 0:  # every D^2 is 0: the lowest unpicked row
                first = torch.nonzero(~picked)
                candidate = offsets[rank] + int(first[0]) if first.numel() else big
                c = int(_all_reduce(torch.tensor([candidate], device=device), dist.ReduceOp.MIN, group))
            else:
                target = float(uniforms[step - 1]) * total
                cum = prefix + local_cum  # this rank's rows' cumulative sums over the pool
                hit = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64, device=device),
                                             right=True)) if n_local else 0
                candidate = offsets[rank] + hit if hit < n_local else big
                c = int(_all_reduce(torch.tensor([candidate], device=device), dist.ReduceOp.MIN, group))
                if c == big:  # rounding put the target at the total: the last row with D^2 > 0
                    positive = torch.nonzero(d2 > 0)
                    last = offsets[rank] + int(positive[-1]) if positive.numel() else -1
                    c = int(_all_reduce(torch.tensor([last], device=device), dist.ReduceOp.MAX, group))
        owner = _owner(c, offsets)
        if owner == rank:
            i = c - offsets[rank]
            packed = torch.cat([a[i], feats[i], g[i:i + 1]])
        else:
            packed = torch.empty(a.shape[1] + feats.shape[1] + 1, dtype=dtype, device=device)
        packed = _broadcast(packed, owner, group)
        a_c, h_c, g_c = packed[:a.shape[1]], packed[a.shape[1]:-1], packed[-1]
        picks.append(c)
        d2 = torch.minimum(d2, sqdist_to(a, feats, g, a_c, h_c, g_c))
        if owner == rank:
            d2[c - offsets[rank]] = 0
            picked[c - offsets[rank]] = True
    return torch.tensor(picks, dtype=torch.long, device=device)


def nearest(queries: torch.Tensor, keys: torch.Tensor, *, metric: str = "cosine", keys_sharded: bool = True,
            group=None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """ops.nearest for this rank's queries against the keys of every rank (`keys_sharded`: each rank
    passes its shard, in rank order; else every rank passes all keys). Returns this rank's (values,
    global key indices)."""
    checks.tensors(queries=queries, keys=keys)
    if keys_sharded:
        world, _ = _world(group)
        sizes = [int(s) for s in _all_gather(torch.tensor([keys.shape[0]], device=keys.device), group)]
        padded = torch.zeros(max(sizes), keys.shape[1], dtype=keys.dtype, device=keys.device)
        padded[:keys.shape[0]] = keys
        keys = torch.cat([part[:size] for part, size in zip(_all_gather(padded, group), sizes)])
    if queries.dim() == 2 and queries.shape[0] == 0:  # a rank without rows
        dtype = torch.promote_types(checks.compute_dtype(queries), checks.compute_dtype(keys))
        return (torch.empty(0, dtype=dtype, device=queries.device),
                torch.empty(0, dtype=torch.long, device=queries.device))
    return ops.nearest(queries, keys, metric=metric, backend=backend)


def top_b(scores: torch.Tensor, b: int, *, group=None) -> torch.Tensor:
    """ops.top_b over the scores of every rank's shard: the b largest, highest first, ties to the
    lowest global index; (b,) global indices, the same on every rank."""
    checks.tensors(scores=scores)
    if scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}")
    checks.finite("scores", scores)
    offsets = shard_offsets(scores.shape[0], scores.device, group)
    b = checks.count("b", b, high=offsets[-1], what=f"the {offsets[-1]} scores of the pool")
    _, rank = _world(group)
    local = ops.top_b(scores, min(b, scores.shape[0]))
    values = torch.full((b,), -math.inf, dtype=torch.float64, device=scores.device)
    index = torch.full((b,), -1, dtype=torch.long, device=scores.device)
    values[:local.numel()] = scores[local].double()
    index[:local.numel()] = local + offsets[rank]
    all_values = torch.cat(_all_gather(values, group))
    all_index = torch.cat(_all_gather(index, group))
    real = all_index >= 0
    all_values, all_index = all_values[real], all_index[real]
    order = torch.argsort(all_index)  # index order, then a stable sort by descending score
    all_values, all_index = all_values[order], all_index[order]
    return all_index[torch.sort(all_values, descending=True, stable=True).indices[:b]]
