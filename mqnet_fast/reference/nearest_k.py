from __future__ import annotations

import torch
import torch.nn.functional as F

SIM_ELEMENTS = 2**24  # similarities per block of rows (64 MB in float32)


def nearest_k(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str = "cosine",
              exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best keys per query, the definition: (values (N, k), indices (N, k) int64), best first,
    ties to the lower key index (a stable sort of each row of similarities; for k = 1 its first
    maximum).

    cosine: normalize(q) . normalize(k) (norms clamped at 1e-12, as F.normalize); dot: q . k as
    given. exclude_self: query i is key i (N == M), and key i is skipped for it. Blocks of rows
    against all keys at a time (at most SIM_ELEMENTS similarities), on any device.
    """
    if metric == "cosine":
        queries, keys = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    elif metric != "dot":
        raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
    n, m = queries.shape[0], keys.shape[0]
    values = torch.empty(n, k, dtype=queries.dtype, device=queries.device)
    indices = torch.empty(n, k, dtype=torch.long, device=queries.device)
    chunk = max(1, min(n, SIM_ELEMENTS // max(1, m)))
    for start in range(0, n, chunk):
        sim = queries[start:start + chunk] @ keys.T
        if exclude_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, start + rows] = float("-inf")
        if k == 1:  # the first maximum (a row's first neighbour): no sort
            top = sim.argmax(1, keepdim=True)
        else:
            top = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
        values[start:start + chunk] = sim.gather(1, top)
        indices[start:start + chunk] = top
    return values, indices
