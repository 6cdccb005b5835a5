from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """|x_i - center|^2 for every row i (the distance of the definition)."""
    return ((x - center) ** 2).sum(1)


def kcenter_greedy(x: torch.Tensor, labeled: torch.Tensor, budget: int, excluded: torch.Tensor):
    """Farthest-first traversal, the definition.

    x: (N, d) float; labeled: (L,) int64 initial centers; excluded: (N,) bool rows never picked.
    Each pick is the eligible row (not labeled, excluded or picked) farthest from its nearest
    center, ties to the lowest index; with no center yet, the lowest eligible row (radius inf).
    Returns (picks (budget,) int64, radius at each pick (budget,), final nearest-center distance (N,)).
    """
    n = x.shape[0]
    min_d2 = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    for j in labeled.tolist():
        min_d2 = torch.minimum(min_d2, squared_distances(x, x[j]))
    eligible = ~excluded.clone()
    eligible[labeled] = False
    picks, radii = [], []
    minus_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    for _ in range(budget):
        c = int(torch.argmax(torch.where(eligible, min_d2, minus_inf)))  # first maximum
        picks.append(c)
        radii.append(min_d2[c].sqrt())
        eligible[c] = False
        min_d2 = torch.minimum(min_d2, squared_distances(x, x[c]))
    radii = torch.stack(radii) if radii else torch.empty(0, dtype=x.dtype, device=x.device)
    return torch.tensor(picks, dtype=torch.long, device=x.device), radii, min_d2.sqrt()
