"""The collectives the ops' sharded variants are built from (torch.distributed; every function here
is called by every rank of `group`), and what they sent and received (`bytes_communicated`)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

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


def count_bytes(sent: float, received: float) -> None:
    _BYTES["sent"] += sent
    _BYTES["received"] += received


def size_and_rank(group):
    return dist.get_world_size(group), dist.get_rank(group)


def global_rank(rank: int, group) -> int:
    return dist.get_global_rank(group, rank) if group is not None else rank


def all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    world, _ = size_and_rank(group)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous(), group=group)
    size = t.numel() * t.element_size()
    count_bytes(size * (world - 1), size * (world - 1))
    return out


def broadcast(t: torch.Tensor, src: int, group) -> torch.Tensor:
    world, rank = size_and_rank(group)
    t = t.contiguous()
    dist.broadcast(t, src=global_rank(src, group), group=group)
    size = t.numel() * t.element_size()
    count_bytes(size * (world - 1), 0) if rank == src else count_bytes(0, size)
    return t


def all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    world, _ = size_and_rank(group)
    dist.all_reduce(t, op=op, group=group)
    size = t.numel() * t.element_size()
    count_bytes(2 * (world - 1) / world * size, 2 * (world - 1) / world * size)
    return t


def agree(check, group, device) -> None:
    """Run `check()` (the local argument checks) on every rank, then raise on every rank if it
    raised on any: on the failing rank its own error, on the others one naming the rank."""
    error = None
    try:
        check()
    except (TypeError, ValueError, IndexError) as err:
        error = err
    world, rank = size_and_rank(group)
    failed = all_reduce(torch.tensor([rank if error is not None else world], device=device), dist.ReduceOp.MIN,
                         group)
    if error is not None:
        raise error
    if int(failed) < world:
        raise ValueError(f"rank {int(failed)} refused its arguments (its error says why)")


def device_of(*tensors) -> torch.device:
    return next((t.device for t in tensors if isinstance(t, torch.Tensor)), torch.device("cpu"))


_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def gathered_offsets(n_local: int, device: torch.device, group=None, *, width: int = 0,
                     dtype: torch.dtype | None = None) -> list[int]:
    """The global row where each rank's shard starts, and the pool size last ((W + 1,) ints). With
    `width` and `dtype` it also checks that every rank's shard has those (the same on every rank)."""
    code = _DTYPES.index(dtype) if dtype in _DTYPES else -1
    shapes = all_gather(torch.tensor([n_local, width, code], dtype=torch.long, device=device), group)
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


def owner_of(index: int, offsets: list[int]) -> int:
    for rank in range(len(offsets) - 1):
        if offsets[rank] <= index < offsets[rank + 1]:
            return rank
    raise IndexError(f"row {index} is outside the pool of {offsets[-1]} rows")


def best_pair(local_value: float, local_index: int, device, group) -> tuple[float, int]:
    """The global (max value, lowest global index at it) from each rank's candidate (value -inf and
    index -1 for a rank without one)."""
    pair = torch.tensor([local_value, float(local_index)], dtype=torch.float64, device=device)
    best_value, best_index = -math.inf, -1
    for candidate in all_gather(pair, group):
        value, index = float(candidate[0]), int(candidate[1])
        if index < 0:
            continue
        if value > best_value or (value == best_value and (best_index < 0 or index < best_index)):
            best_value, best_index = value, index
    return best_value, best_index


def all_gather_rows(x: torch.Tensor, *, group=None) -> torch.Tensor:
    """The concatenation, in rank order, of every rank's `x` (n_r, ...) (n_r may differ, even be 0;
    the trailing shape and dtype must agree): for per-row values such as one score per candidate,
    not for the pool's features."""
    device = device_of(x)
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    offsets = gathered_offsets(flat.shape[0], device, group, width=flat.shape[1], dtype=x.dtype)
    sizes = [offsets[r + 1] - offsets[r] for r in range(len(offsets) - 1)]
    padded = torch.zeros(max(sizes), flat.shape[1], dtype=x.dtype, device=device)
    padded[:flat.shape[0]] = flat
    rows = torch.cat([part[:size] for part, size in zip(all_gather(padded, group), sizes)])
    return rows.reshape(offsets[-1], *x.shape[1:])
