"""nearest: the best key per query by cosine similarity or l2 distance, in one process (backends
below) or for each rank's queries against the keys of every rank of a process group (`sharded`)."""
from __future__ import annotations

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import _triton, reference
from mqnet_fast._library import has_compiled
from mqnet_fast.ops._backends import Backends, resolve, storage_dtype
from mqnet_fast.ops._collectives import agree, all_gather_rows, device_of

# The Triton and CUDA kernels compute in float32 (half-precision storage allowed).
TABLE = Backends("nearest", float32=("triton", "cuda"))

METRICS = ("cosine", "l2")


def nearest(queries: torch.Tensor, keys: torch.Tensor, *, metric: str = "cosine",
            backend: str = "auto", group=None, keys_sharded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-set similarity: the best key for every query (purity scores, CSI/CCAL-style).

    Args:
        queries: (N, d) float; keys: (M, d) float, M >= 1 (same dtype after promotion to float32/64).
        metric: "cosine": values[i] = max_j cos(q_i, k_j) (norms clamped at 1e-12);
                "l2": values[i] = min_j |q_i - k_j| (computed as |q|^2 + |k|^2 - 2 q.k, clamped at 0).

    Returns: (values (N,) in the compute dtype, indices (N,) int64), ties to the lowest key index.
    The compiled kernel reduces GEMM tiles in cache and never forms the (N, M) matrix.

    Across processes: with `group` (a torch.distributed process group; torch.distributed.group.WORLD
    for all of them) every rank calls it with its own queries and, with `keys_sharded`, its own
    shard of the keys in rank order (else all keys); it returns this rank's values and global key
    indices (`sharded`; mqnet_fast.distributed says what moves).

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); k = torch.tensor([[0.0, 1.0], [3.0, 0.1]])
        >>> nearest(q, k)[1]
        tensor([1, 0])
    """
    if group is not None:
        return sharded(queries, keys, metric=metric, keys_sharded=keys_sharded, group=group,
                       backend=backend)

    checks.tensors(queries=queries, keys=keys)
    device = checks.same_device(queries=queries, keys=keys)
    checks.copy_memory("queries and keys", queries, checks.compute_dtype(queries), keys)
    queries = checks.matrix("queries", queries, products=1)
    keys = checks.matrix("keys", keys, cols=queries.shape[1], products=1)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    dtype = torch.promote_types(checks.compute_dtype(queries), checks.compute_dtype(keys))
    chosen = resolve(TABLE, backend, device, dtype)
    if chosen == "triton":
        storage = torch.promote_types(storage_dtype(queries), storage_dtype(keys))
        return _triton.kernel_module("nearest").nearest(queries.to(storage), keys.to(storage), metric == "l2")
    if chosen == "cuda":
        storage = torch.promote_types(storage_dtype(queries), storage_dtype(keys))
        return torch.ops.mqnet_fast.nearest(queries.to(storage), keys.to(storage), metric)
    queries, keys = queries.to(dtype), keys.to(dtype)
    if chosen == "torch":
        return reference.nearest(queries, keys, metric)
    return torch.ops.mqnet_fast.nearest(queries, keys, metric)


# ---------------------------------------------------------------------------------------------------
# Across processes


def sharded(queries: torch.Tensor, keys: torch.Tensor, *, metric: str = "cosine", keys_sharded: bool = True,
            group=None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """ops.nearest for this rank's queries against the keys of every rank (`keys_sharded`: each rank
    passes its shard, in rank order; else every rank passes all keys). Returns this rank's (values,
    global key indices)."""
    device = device_of(queries, keys)

    def check():
        checks.tensors(queries=queries, keys=keys)
        checks.matrix("queries", queries, allow_empty=True, check_values=False)
        checks.matrix("keys", keys, allow_empty=keys_sharded, cols=queries.shape[1], check_values=False)

    agree(check, group, device)
    if keys_sharded:
        keys = all_gather_rows(keys, group=group)  # every rank's shard, in rank order
    if queries.shape[0] == 0:  # a rank without rows
        dtype = torch.promote_types(checks.compute_dtype(queries), checks.compute_dtype(keys))
        return torch.empty(0, dtype=dtype, device=device), torch.empty(0, dtype=torch.long, device=device)
    return nearest(queries, keys, metric=metric, backend=backend)


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::nearest")
    def _(queries, keys, metric):
        n = queries.shape[0]
        dtype = torch.float32 if queries.dtype in (torch.bfloat16, torch.float16) else queries.dtype
        return queries.new_empty((n,), dtype=dtype), queries.new_empty((n,), dtype=torch.long)


if has_compiled():
    _register_fake()
