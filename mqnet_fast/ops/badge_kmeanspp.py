"""badge_kmeanspp: BADGE's k-means++ seeding over implicit gradient embeddings (Ash et al., ICLR
2020), in one process (backends below) or across the ranks of a process group (`sharded`)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from mqnet_fast import _checks as checks
from mqnet_fast import _triton, reference
from mqnet_fast._library import has_compiled
from mqnet_fast.ops._backends import Backends, resolve, storage_dtype
from mqnet_fast.ops._collectives import (agree, all_reduce, best_pair, broadcast, count_bytes, device_of,
                                         gathered_offsets, global_rank, owner_of, size_and_rank)
from mqnet_fast.reference.badge_kmeanspp import gradient_factors

# The Triton and CUDA kernels compute in float32 (half-precision storage of the features allowed).
TABLE = Backends("badge_kmeanspp", float32=("triton", "cuda"))


def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, *,
                   generator: torch.Generator | None = None, backend: str = "auto", group=None) -> torch.Tensor:
    """BADGE's k-means++ seeding over the implicit gradient embeddings g_i = (onehot(argmax p_i) - p_i) outer h_i.

    Args:
        probs: (N, C) softmax probabilities; feats: (N, d) penultimate features (same rows).
        k: number of picks, 0 <= k <= N.
        generator: a CPU torch.Generator (None: the global RNG). k - 1 float64 uniforms are drawn from
            it up front, one per D^2-sampled pick, so a seed gives the same picks on every backend.

    Math: g is never formed; |g_i - g_j|^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i.a_j)(h_i.h_j),
    a = onehot - p. First pick: the largest |g| (lowest index on ties). Then each pick draws u and takes
    the first row whose float64 cumulative D^2 (in index order) exceeds u * sum D^2, where D^2 is the
    squared distance to the nearest pick (if every D^2 is 0: the lowest unpicked row).
    Memory O(N (C + d)).

    Returns: (k,) int64 picks in pick order, distinct.

    Across processes: with `group` (a torch.distributed process group; torch.distributed.group.WORLD
    for all of them) every rank calls it with its own contiguous shard of the pool's rows, in rank
    order, and a `generator` in the same state on every rank (required then); the k global picks,
    the same on every rank, are the single-process reference's on the concatenated pool (`sharded`;
    mqnet_fast.distributed says what moves).

    Example:
        >>> p = torch.softmax(torch.randn(100, 10), 1); h = torch.randn(100, 32)
        >>> badge_kmeanspp(p, h, 5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5])
    """
    if group is not None:
        if backend not in ("auto", "torch"):
            raise ValueError(f"badge_kmeanspp: across processes (group=) every rank runs the plain-PyTorch variant on its "
                             f"shard; backend must be 'auto' or 'torch', got {backend!r}")
        return sharded(probs, feats, k, generator=generator, group=group)

    checks.tensors(probs=probs, feats=feats)
    device = checks.same_device(probs=probs, feats=feats)
    checks.copy_memory("feats", feats, checks.compute_dtype(feats))
    probs = checks.matrix("probs", probs)
    feats = checks.matrix("feats", feats, rows=probs.shape[0], products=1)
    k = checks.count("k", k, high=probs.shape[0], what=f"the {probs.shape[0]} rows of probs")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    uniforms = torch.rand(max(k - 1, 0), generator=generator, dtype=torch.float64).to(device)
    dtype = torch.promote_types(checks.compute_dtype(probs), checks.compute_dtype(feats))
    chosen = resolve(TABLE, backend, device, dtype)
    if chosen == "triton":
        return _triton.kernel_module("badge_kmeanspp").badge_kmeanspp(
            probs.float(), feats.to(storage_dtype(feats)), k, uniforms)
    if chosen == "cuda":
        return torch.ops.mqnet_fast.badge_kmeanspp(probs.float(), feats.to(storage_dtype(feats)), k, uniforms)
    probs, feats = probs.to(dtype), feats.to(dtype)
    if chosen == "torch":
        return reference.badge_kmeanspp(probs, feats, k, uniforms)
    return torch.ops.mqnet_fast.badge_kmeanspp(probs, feats, k, uniforms)


# ---------------------------------------------------------------------------------------------------
# Across processes


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


def _chained_cumsum(d2: torch.Tensor, rank: int, world: int, group) -> tuple[torch.Tensor, float]:
    """This rank's float64 cumulative D^2 sums as one running sum over the pool in index order (each
    rank continues from the previous rank's last sum: the very sums of the single-process cumsum),
    and the pool's total, from the last rank. W - 1 messages of 8 bytes in sequence, one broadcast."""
    start = torch.zeros(1, dtype=torch.float64, device=d2.device)
    if rank > 0:
        dist.recv(start, src=global_rank(rank - 1, group), group=group)
        count_bytes(0, 8)
    cum = torch.cumsum(torch.cat([start, d2.double()]), 0)[1:]
    end = cum[-1:].clone() if cum.numel() else start
    if rank < world - 1:
        dist.send(end, dst=global_rank(rank + 1, group), group=group)
        count_bytes(8, 0)
    total = broadcast(end.clone(), world - 1, group)
    return cum, float(total)


def sharded(probs: torch.Tensor, feats: torch.Tensor, k: int, *, generator: torch.Generator,
            group=None) -> torch.Tensor:
    """ops.badge_kmeanspp over the pool sharded by rank: `probs` (n_r, C) and `feats` (n_r, d) this
    rank's rows; `generator` a CPU generator in the same state on every rank (its k - 1 float64
    uniforms are the single-process op's; required, as each rank's global RNG would draw its own).
    Returns the k global picks, the same on every rank."""
    world, rank = size_and_rank(group)
    device = device_of(probs, feats)
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

    agree(check, group, device)
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
            c = best_pair(float(g[local]) if n_local else -math.inf, offsets[rank] + local if n_local else -1,
                      device, group)[1]
        else:
            cum, total = _chained_cumsum(d2, rank, world, group)
            if total == 0:  # every D^2 is 0: the lowest unpicked row
                first = torch.nonzero(~picked)
                candidate = offsets[rank] + int(first[0]) if first.numel() else none
                c = int(all_reduce(torch.tensor([candidate], device=device), dist.ReduceOp.MIN, group))
            else:
                target = torch.tensor([float(uniforms[step - 1]) * total], dtype=torch.float64, device=device)
                hit = int(torch.searchsorted(cum, target, right=True)) if n_local else 0
                candidate = offsets[rank] + hit if hit < n_local else none
                c = int(all_reduce(torch.tensor([candidate], device=device), dist.ReduceOp.MIN, group))
                if c == none:  # rounding put the target at the total: the last row with D^2 > 0
                    positive = torch.nonzero(d2 > 0)
                    last = offsets[rank] + int(positive[-1]) if positive.numel() else -1
                    c = int(all_reduce(torch.tensor([last], device=device), dist.ReduceOp.MAX, group))
        owner = owner_of(c, offsets)
        if owner == rank:
            i = c - offsets[rank]
            packed = torch.cat([a[i], feats[i], g[i:i + 1]])
        else:
            packed = torch.empty(a.shape[1] + feats.shape[1] + 1, dtype=dtype, device=device)
        packed = broadcast(packed, owner, group)
        a_c, h_c, g_c = packed[:a.shape[1]], packed[a.shape[1]:-1], packed[-1]
        picks.append(c)
        torch.minimum(d2, distances(a_c, h_c, g_c), out=d2)
        if owner == rank:
            d2[c - offsets[rank]] = 0
            picked[c - offsets[rank]] = True
    return torch.tensor(picks, dtype=torch.long, device=device)


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::badge_kmeanspp")
    def _(probs, feats, k, uniforms):
        return probs.new_empty((k,), dtype=torch.long)


if has_compiled():
    _register_fake()
