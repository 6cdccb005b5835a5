"""top_b: the indices of the b largest scores, highest first, ties to the lowest index, in one
process or over the scores of every rank of a process group (`sharded`)."""
from __future__ import annotations

import math

import torch

from mqnet_fast import _checks as checks
from mqnet_fast.ops._collectives import agree, all_gather, device_of, gathered_offsets, size_and_rank


def top_b(scores: torch.Tensor, b: int, *, group=None) -> torch.Tensor:
    """Indices of the b largest scores, highest first, ties to the lowest index (deterministic,
    unlike a bare torch.topk). scores: (N,) float. Returns (b,) int64.

    Across processes: with `group` (a torch.distributed process group; torch.distributed.group.WORLD
    for all of them) every rank calls it with the scores of its own shard, in rank order: the b
    largest of all, as (b,) global indices, the same on every rank (`sharded`)."""
    if group is not None:
        return sharded(scores, b, group=group)
    checks.tensors(scores=scores)
    checks.scores("scores", scores)
    b = checks.count("b", b, high=scores.shape[0], what=f"the {scores.shape[0]} scores")
    if b == 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    threshold = torch.topk(scores, b).values[-1]
    above = torch.nonzero(scores > threshold).squeeze(1)
    at = torch.nonzero(scores == threshold).squeeze(1)[: b - above.numel()]
    chosen = torch.sort(torch.cat([above, at])).values
    # A stable sort of index-ordered rows by descending score keeps tied rows in index order.
    return chosen[torch.sort(scores[chosen], descending=True, stable=True).indices]


# ---------------------------------------------------------------------------------------------------
# Across processes


def sharded(scores: torch.Tensor, b: int, *, group=None) -> torch.Tensor:
    """ops.top_b over the scores of every rank's shard: the b largest, highest first, ties to the
    lowest global index; (b,) global indices, the same on every rank."""
    device = device_of(scores)

    def check():
        checks.tensors(scores=scores)
        if scores.dim() != 1:
            raise ValueError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}")
        checks.finite("scores", scores)

    agree(check, group, device)
    offsets = gathered_offsets(scores.shape[0], device, group)
    b = checks.count("b", b, high=offsets[-1], what=f"the {offsets[-1]} scores of the pool")
    _, rank = size_and_rank(group)
    local = top_b(scores, min(b, scores.shape[0]))
    values = torch.full((b,), -math.inf, dtype=torch.float64, device=device)
    index = torch.full((b,), -1, dtype=torch.long, device=device)
    values[:local.numel()] = scores[local].double()
    index[:local.numel()] = local + offsets[rank]
    all_values = torch.cat(all_gather(values, group))
    all_index = torch.cat(all_gather(index, group))
    real = all_index >= 0
    all_values, all_index = all_values[real], all_index[real]
    order = torch.argsort(all_index)  # index order, then a stable sort by descending score
    all_values, all_index = all_values[order], all_index[order]
    return all_index[torch.sort(all_values, descending=True, stable=True).indices[:b]]

