"""nearest_k: the k best keys per query by cosine similarity or dot product, best first, with the
query's own row left out on request (first neighbours within one set)."""
from __future__ import annotations

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import reference
from mqnet_fast._library import has_op
from mqnet_fast.ops._backends import Backends, resolve

# A GEMM tile per (query block, key block) reduced at once into each query's k best: the C++ kernel
# on the CPU. On a GPU "auto" takes the reference, which runs there in blocks of rows.
TABLE = Backends("nearest_k", kernels=("torch", "cpp"),
                 missing={"triton": "nearest_k: there is no 'triton' kernel; on CUDA tensors 'auto' and 'torch' "
                                    "run the blocked reference on the GPU",
                          "cuda": "nearest_k: there is no 'cuda' kernel; on CUDA tensors 'auto' and 'torch' run "
                                  "the blocked reference on the GPU"})

METRICS = ("cosine", "dot")


def nearest_k(queries: torch.Tensor, keys: torch.Tensor, k: int, *, metric: str = "cosine",
              exclude_self: bool = False, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k best keys for every query (EAOA's neighbours, CCAL's two closest, FINCH's first neighbour).

    Args:
        queries: (N, d) float, N >= 1; keys: (M, d) float (same dtype after promotion to float32/64).
        k: how many keys per query, 1 <= k <= M (M - 1 with `exclude_self`).
        metric: "cosine": cos(q_i, k_j) (rows normalized as F.normalize does, norms clamped at
                1e-12); "dot": q_i . k_j as given (the cosine of rows already normalized).
        exclude_self: query i is key i (the same set, N == M): key i is never among query i's.

    Returns: (values (N, k) in the compute dtype, indices (N, k) int64), best first, ties to the
    lower key index. The compiled kernel reduces GEMM tiles in cache and never forms the (N, M)
    matrix; its result does not depend on the number of threads.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> nearest_k(x, x, 1, exclude_self=True)[1]
        tensor([[1],
                [0],
                [1]])
    """
    same = queries is keys
    checks.tensors(queries=queries, keys=keys)
    device = checks.same_device(queries=queries, keys=keys)
    checks.copy_memory("queries and keys", queries, checks.compute_dtype(queries), keys)
    queries = checks.matrix("queries", queries, products=1)
    keys = queries if same else checks.matrix("keys", keys, cols=queries.shape[1], products=1)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")
    if exclude_self and queries.shape[0] != keys.shape[0]:
        raise ValueError(f"exclude_self needs the queries to be the keys (query i is key i), got {queries.shape[0]} "
                         f"queries and {keys.shape[0]} keys")
    available = keys.shape[0] - exclude_self
    k = checks.count("k", k, low=1, high=available,
                     what=f"the {available} keys" + (" other than the query's own" if exclude_self else ""))
    dtype = torch.promote_types(checks.compute_dtype(queries), checks.compute_dtype(keys))
    chosen = resolve(TABLE, backend, device, dtype)
    queries = queries.to(dtype)
    keys = queries if same else keys.to(dtype)
    if chosen == "torch":
        return reference.nearest_k(queries, keys, k, metric, exclude_self)
    if metric == "cosine":  # the reference's normalization, so that both backends see the same rows
        queries = torch.nn.functional.normalize(queries, dim=1)
        keys = queries if same else torch.nn.functional.normalize(keys, dim=1)
    return torch.ops.mqnet_fast.nearest_k(queries, keys, k, exclude_self)


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::nearest_k")
    def _(queries, keys, k, exclude_self):
        n = queries.shape[0]
        return queries.new_empty((n, k)), queries.new_empty((n, k), dtype=torch.long)


if has_op("nearest_k"):
    _register_fake()
