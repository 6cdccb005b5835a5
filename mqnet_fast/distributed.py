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
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from mqnet_fast import _checks as checks
from mqnet_fast import ops
from mqnet_fast.reference.badge_kmeanspp import gradient_factors
from mqnet_fast.ops import KCenterResult

_BYTES = {"sent": 0, "received": 0}


def bytes_communicated(reset: bool = False) -> dict[str, int]:
    """Bytes this rank sent and received through this module's collectives since the last reset,
    counted as the plain algorithms move them: an all-gather of S bytes sends S to and receives S
    from each other rank; a broadcast's root sends S to each other rank, the others receive S once;
    an all-reduce counts 2 (W - 1) / W S each way (a ring); a point-to-point message its size. One
    process (W = 1) moves nothing."""
    out = {k: round(v) for k, v in _BYTES.items()}
    if reset:
        _BYTES["sent"] = _BYTES["received"] = 0
    return out


def _count(sent: float, received: float) -> None:
    _BYTES["sent"] += sent
    _BYTES["received"] += received


def _world(group):
    return dist.get_world_size(group), dist.get_rank(group)


def _global(rank: int, group) -> int:
    return dist.get_global_rank(group, rank) if group is not None else rank


def _all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    world, _ = _world(group)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous(), group=group)
    size = t.numel() * t.element_size()
    _count(size * (world - 1), size * (world - 1))
    return out


def _broadcast(t: torch.Tensor, src: int, group) -> torch.Tensor:
    world, rank = _world(group)
    t = t.contiguous()
    dist.broadcast(t, src=_global(src, group), group=group)
    size = t.numel() * t.element_size()
    _count(size * (world - 1), 0) if rank == src else _count(0, size)
    return t


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    world, _ = _world(group)
    dist.all_reduce(t, op=op, group=group)
    size = t.numel() * t.element_size()
    _count(2 * (world - 1) / world * size, 2 * (world - 1) / world * size)
    return t


def _agree(check, group, device) -> None:
    """Run `check()` (the local argument checks) on every rank, then raise on every rank if it
    raised on any: on the failing rank its own error, on the others one naming the rank."""
    error = None
    try:
        check()
    except (TypeError, ValueError, IndexError) as err:
        error = err
    world, rank = _world(group)
    failed = _all_reduce(torch.tensor([rank if error is not None else world], device=device), dist.ReduceOp.MIN,
                         group)
    if error is not None:
        raise error
    if int(failed) < world:
        raise ValueError(f"rank {int(failed)} refused its arguments (its error says why)")


def _device(*tensors) -> torch.device:
    return next((t.device for t in tensors if isinstance(t, torch.Tensor)), torch.device("cpu"))


_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def gathered_offsets(n_local: int, device: torch.device, group=None, *, width: int = 0,
                  dtype: torch.dtype | None = None) -> list[int]:
    """The global row where each rank's shard starts, and the pool size last ((W + 1,) ints). With
    `width` and `dtype` it also checks that every rank's shard has those (the same on every rank)."""
    code = _DTYPES.index(dtype) if dtype in _DTYPES else -1
    shapes = _all_gather(torch.tensor([n_local, width, code], dtype=torch.long, device=device), group)
    offsets = [0]
    for shape in shapes:
        offsets.append(offsets[-1] + int(shape[0]))
    widths = {int(shape[1]) for shape in shapes}
    codes = {int(shape[2]) for shape in shapes}
    if len(widths) > 1 or len(codes) > 1:
        listing = ", ".join(f"rank {r}: {int(shape[1])} columns, "
                            f"{_DTYPES[int(shape[2])] if int(shape[2]) >= 0 else 'other dtype'}"
                            for r, shape in enumerate(shapes))
        raise ValueError(f"the ranks' shards must have the same columns and dtype (an empty shard too), got {listing}")
    return offsets


def _owner(index: int, offsets: list[int]) -> int:
    for rank in range(len(offsets) - 1):
        if offsets[rank] <= index < offsets[rank + 1]:
            return rank
    raise IndexError(f"row {index} is outside the pool of {offsets[-1]} rows")


def _best(local_value: float, local_index: int, device, group) -> tuple[float, int]:
    """The global (max value, lowest global index at it) from each rank's candidate (value -inf and
    index -1 for a rank without one)."""
    pair = torch.tensor([local_value, float(local_index)], dtype=torch.float64, device=device)
    best_value, best_index = -math.inf, -1
    for candidate in _all_gather(pair, group):
        value, index = float(candidate[0]), int(candidate[1])
        if index < 0:
            continue
        if value > best_value or (value == best_value and (best_index < 0 or index < best_index)):
            best_value, best_index = value, index
    return best_value, best_index


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


class _GradientDistances:
    """sqdist_to of the reference (|g_i - g_c|^2 = G_i + G_c - 2 (a_i . a_c)(h_i . h_c), clamped at 0),
    the same bits, in row chunks through reused buffers (as _Distances)."""

    CHUNK = 4096

    def __init__(self, a: torch.Tensor, feats: torch.Tensor, g: torch.Tensor):
        self.a, self.feats, self.g = a, feats, g
        rows = min(self.CHUNK, a.shape[0])
        self.a_buffer = torch.empty(rows, a.shape[1], dtype=a.dtype, device=a.device)
        self.h_buffer = torch.empty(rows, feats.shape[1], dtype=a.dtype, device=a.device)
        self.out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)

    def __call__(self, a_c, h_c, g_c) -> torch.Tensor:
        for start in range(0, self.a.shape[0], self.CHUNK):
            stop = min(start + self.CHUNK, self.a.shape[0])
            a_buffer, h_buffer = self.a_buffer[:stop - start], self.h_buffer[:stop - start]
            ad = torch.mul(self.a[start:stop], a_c, out=a_buffer).sum(1)
            hd = torch.mul(self.feats[start:stop], h_c, out=h_buffer).sum(1)
            self.out[start:stop] = ((self.g[start:stop] + g_c) - 2 * (ad * hd)).clamp_min(0)
        return self.out


_LOW32 = (1 << 32) - 1


def _best_float32(local_value: float, local_index: int, device, group) -> tuple[float, int]:
    """_best for float32 values >= 0 (or +inf) and fewer than 2^32 rows, in one max all-reduce of 8
    bytes: a non-negative float32's bits order as its value, so (bits << 32) | (2^32 - 1 - index)
    is largest for the largest value and, among equal values, the lowest index; -1 (below every
    packed pair) stands for a rank without a candidate."""
    if local_index < 0:
        packed = -1
    else:
        bits = int(torch.tensor(local_value, dtype=torch.float32).view(torch.int32))
        packed = (bits << 32) | (_LOW32 - local_index)
    best = int(_all_reduce(torch.tensor([packed], dtype=torch.long, device=device), dist.ReduceOp.MAX, group))
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
    return _all_reduce(out, dist.ReduceOp.SUM, group)


def kcenter_greedy(x: torch.Tensor, labeled, budget: int, *, exclude=None, group=None) -> KCenterResult:
    """ops.kcenter_greedy over the pool sharded by rank: `x` (n_r, d) this rank's rows; `labeled`
    (L,) global row indices of the labeled rows (the same on every rank); `exclude` rows of this
    rank's shard never picked (shard indices or an (n_r,) bool mask). Returns (indices (budget,)
    global, in pick order, and radii (budget,), the same on every rank; min_dist (n_r,) of this
    rank's rows): the picks of the single-process reference on the concatenated pool."""
    world, rank = _world(group)
    device = _device(x)
    state = {}

    def check():
        checks.tensors(x=x)
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (rows x features), got shape {tuple(x.shape)}")
        state["x"] = checks.matrix("x", x, allow_empty=True).to(checks.compute_dtype(x))
        state["excluded"] = checks.row_mask("exclude", exclude, x.shape[0], device)

    _agree(check, group, device)
    x, excluded = state["x"], state["excluded"]
    n_local = x.shape[0]
    offsets = gathered_offsets(n_local, device, group, width=x.shape[1], dtype=x.dtype)
    labeled = checks.indices("labeled", labeled, offsets[-1], device)  # the same on every rank
    eligible = ~excluded
    mine = (labeled >= offsets[rank]) & (labeled < offsets[rank + 1])
    eligible[labeled[mine] - offsets[rank]] = False
    available = int(_all_reduce(eligible.sum().view(1).long(), dist.ReduceOp.SUM, group))
    budget = checks.count("budget", budget, high=available,
                          what=f"the {available} rows that are neither labeled nor excluded")
    min_d2 = torch.full((n_local,), math.inf, dtype=x.dtype, device=device)
    distances = _Distances(x)
    for center in _gather_rows(x, labeled, offsets, rank, group):
        torch.minimum(min_d2, distances(center), out=min_d2)  # min is exact: any order
    # float32 radii and the index pack into one int64 max all-reduce; float64 gathers the pairs
    best_of = _best_float32 if x.dtype == torch.float32 and offsets[-1] < _LOW32 else _best
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
        owner = _owner(best, offsets)
        row = (x[best - offsets[rank]].clone() if owner == rank
               else torch.empty(x.shape[1], dtype=x.dtype, device=device))
        row = _broadcast(row, owner, group)
        if owner == rank:
            eligible[best - offsets[rank]] = False
        picks.append(best)
        # torch's sqrt, as the reference takes it (on the CPU it is not always correctly rounded)
        radii.append(torch.tensor(best_value, dtype=x.dtype, device=device).sqrt())
        torch.minimum(min_d2, distances(row), out=min_d2)
    radii = torch.stack(radii) if radii else torch.empty(0, dtype=x.dtype, device=device)
    return KCenterResult(torch.tensor(picks, dtype=torch.long, device=device), radii, min_d2.sqrt())


def _chained_cumsum(d2: torch.Tensor, rank: int, world: int, group) -> tuple[torch.Tensor, float]:
    """This rank's float64 cumulative D^2 sums as one running sum over the pool in index order (each
    rank continues from the previous rank's last sum: the very sums of the single-process cumsum),
    and the pool's total, from the last rank. W - 1 messages of 8 bytes in sequence, one broadcast."""
    start = torch.zeros(1, dtype=torch.float64, device=d2.device)
    if rank > 0:
        dist.recv(start, src=_global(rank - 1, group), group=group)
        _count(0, 8)
    cum = torch.cumsum(torch.cat([start, d2.double()]), 0)[1:]
    end = cum[-1:].clone() if cum.numel() else start
    if rank < world - 1:
        dist.send(end, dst=_global(rank + 1, group), group=group)
        _count(8, 0)
    total = _broadcast(end.clone(), world - 1, group)
    return cum, float(total)


def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, *, generator: torch.Generator,
                   group=None) -> torch.Tensor:
    """ops.badge_kmeanspp over the pool sharded by rank: `probs` (n_r, C) and `feats` (n_r, d) this
    rank's rows; `generator` a CPU generator in the same state on every rank (its k - 1 float64
    uniforms are the single-process op's; required, as each rank's global RNG would draw its own).
    Returns the k global picks, the same on every rank."""
    world, rank = _world(group)
    device = _device(probs, feats)
    state = {}

    def check():
        checks.tensors(probs=probs, feats=feats)
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError("generator must be a CPU torch.Generator in the same state on every rank, got "
                            f"{type(generator).__name__}")
        p = checks.matrix("probs", probs, allow_empty=True)
        h = checks.matrix("feats", feats, rows=probs.shape[0], allow_empty=True)
        dtype = torch.promote_types(checks.compute_dtype(p), checks.compute_dtype(h))
        state["probs"], state["feats"] = p.to(dtype), h.to(dtype)

    _agree(check, group, device)
    probs, feats = state["probs"], state["feats"]
    n_local, dtype = probs.shape[0], probs.dtype
    gathered_offsets(n_local, device, group, width=probs.shape[1], dtype=dtype)  # the classes agree
    offsets = gathered_offsets(n_local, device, group, width=feats.shape[1], dtype=dtype)
    k = checks.count("k", k, high=offsets[-1], what=f"the {offsets[-1]} rows of the pool")
    uniforms = torch.rand(max(k - 1, 0), generator=generator, dtype=torch.float64)
    a, g = gradient_factors(probs, feats)
    d2 = torch.full((n_local,), math.inf, dtype=dtype, device=device)
    picked = torch.zeros(n_local, dtype=torch.bool, device=device)
    distances = _GradientDistances(a, feats, g)
    none = torch.iinfo(torch.long).max
    picks = []
    for step in range(k):
        if step == 0:
            local = int(torch.argmax(g)) if n_local else -1
            c = _best(float(g[local]) if n_local else -math.inf, offsets[rank] + local if n_local else -1,
                      device, group)[1]
        else:
            cum, total = _chained_cumsum(d2, rank, world, group)
            if total == 0:  # every D^2 is 0: the lowest unpicked row
                first = torch.nonzero(~picked)
                candidate = offsets[rank] + int(first[0]) if first.numel() else none
                c = int(_all_reduce(torch.tensor([candidate], device=device), dist.ReduceOp.MIN, group))
            else:
                target = torch.tensor([float(uniforms[step - 1]) * total], dtype=torch.float64, device=device)
                hit = int(torch.searchsorted(cum, target, right=True)) if n_local else 0
                candidate = offsets[rank] + hit if hit < n_local else none
                c = int(_all_reduce(torch.tensor([candidate], device=device), dist.ReduceOp.MIN, group))
                if c == none:  # rounding put the target at the total: the last row with D^2 > 0
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
        torch.minimum(d2, distances(a_c, h_c, g_c), out=d2)
        if owner == rank:
            d2[c - offsets[rank]] = 0
            picked[c - offsets[rank]] = True
    return torch.tensor(picks, dtype=torch.long, device=device)


def nearest(queries: torch.Tensor, keys: torch.Tensor, *, metric: str = "cosine", keys_sharded: bool = True,
            group=None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """ops.nearest for this rank's queries against the keys of every rank (`keys_sharded`: each rank
    passes its shard, in rank order; else every rank passes all keys). Returns this rank's (values,
    global key indices)."""
    device = _device(queries, keys)

    def check():
        checks.tensors(queries=queries, keys=keys)
        checks.matrix("queries", queries, allow_empty=True, check_values=False)
        checks.matrix("keys", keys, allow_empty=keys_sharded, cols=queries.shape[1], check_values=False)

    _agree(check, group, device)
    if keys_sharded:
        offsets = gathered_offsets(keys.shape[0], device, group, width=keys.shape[1], dtype=keys.dtype)
        sizes = [offsets[r + 1] - offsets[r] for r in range(len(offsets) - 1)]
        padded = torch.zeros(max(sizes), keys.shape[1], dtype=keys.dtype, device=device)
        padded[:keys.shape[0]] = keys
        keys = torch.cat([part[:size] for part, size in zip(_all_gather(padded, group), sizes)])
    if queries.shape[0] == 0:  # a rank without rows
        dtype = torch.promote_types(checks.compute_dtype(queries), checks.compute_dtype(keys))
        return torch.empty(0, dtype=dtype, device=device), torch.empty(0, dtype=torch.long, device=device)
    return ops.nearest(queries, keys, metric=metric, backend=backend)


def top_b(scores: torch.Tensor, b: int, *, group=None) -> torch.Tensor:
    """ops.top_b over the scores of every rank's shard: the b largest, highest first, ties to the
    lowest global index; (b,) global indices, the same on every rank."""
    device = _device(scores)

    def check():
        checks.tensors(scores=scores)
        if scores.dim() != 1:
            raise ValueError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}")
        checks.finite("scores", scores)

    _agree(check, group, device)
    offsets = gathered_offsets(scores.shape[0], device, group)
    b = checks.count("b", b, high=offsets[-1], what=f"the {offsets[-1]} scores of the pool")
    _, rank = _world(group)
    local = ops.top_b(scores, min(b, scores.shape[0]))
    values = torch.full((b,), -math.inf, dtype=torch.float64, device=device)
    index = torch.full((b,), -1, dtype=torch.long, device=device)
    values[:local.numel()] = scores[local].double()
    index[:local.numel()] = local + offsets[rank]
    all_values = torch.cat(_all_gather(values, group))
    all_index = torch.cat(_all_gather(index, group))
    real = all_index >= 0
    all_values, all_index = all_values[real], all_index[real]
    order = torch.argsort(all_index)  # index order, then a stable sort by descending score
    all_values, all_index = all_values[order], all_index[order]
    return all_index[torch.sort(all_values, descending=True, stable=True).indices[:b]]


def all_gather_rows(x: torch.Tensor, *, group=None) -> torch.Tensor:
    """The concatenation, in rank order, of every rank's `x` (n_r, ...) (n_r may differ, even be 0;
    the trailing shape and dtype must agree): for per-row values such as one score per candidate,
    not for the pool's features."""
    device = _device(x)
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    offsets = gathered_offsets(flat.shape[0], device, group, width=flat.shape[1], dtype=x.dtype)
    sizes = [offsets[r + 1] - offsets[r] for r in range(len(offsets) - 1)]
    padded = torch.zeros(max(sizes), flat.shape[1], dtype=x.dtype, device=device)
    padded[:flat.shape[0]] = flat
    rows = torch.cat([part[:size] for part, size in zip(_all_gather(padded, group), sizes)])
    return rows.reshape(offsets[-1], *x.shape[1:])
