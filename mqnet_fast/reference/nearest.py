from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest(queries: torch.Tensor, keys: torch.Tensor, metric: str = "cosine"):
    """Best key per query, the definition: (values (N,), indices (N,) int64), ties to the lowest index.

    cosine: max over keys of normalize(q) . normalize(k) (norms clamped at 1e-12, as F.normalize);
    l2: min over keys of the Euclidean distance (the |q|^2 + |k|^2 - 2 q.k expansion, clamped at 0).
    Materializes the full (N, M) matrix.
    """
    if metric == "cosine":
        sim = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
        values, indices = sim.max(1)
        return values, indices
    if metric == "l2":
        d2 = (queries * queries).sum(1, keepdim=True) + (keys * keys).sum(1) - 2 * queries @ keys.T
        values, indices = d2.min(1)
        return values.clamp_min(0).sqrt(), indices
    raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
