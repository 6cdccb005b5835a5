from __future__ import annotations

import torch


def gradient_factors(probs: torch.Tensor, feats: torch.Tensor):
    """(a, G): a_i = onehot(argmax p_i) - p_i and G_i = |a_i|^2 |h_i|^2 = |g_i|^2 for every row."""
    a = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype) - probs
    g = (a * a).sum(1) * (feats * feats).sum(1)
    return a, g


def sqdist_to(a, feats, g, a_c, h_c, g_c) -> torch.Tensor:
    """|g_i - g_c|^2 for every row i to the embedding of (a_c, h_c, G_c), without forming g:
    G_i + G_c - 2 (a_i . a_c)(h_i . h_c), clamped at 0."""
    ad = (a * a_c).sum(1)
    hd = (feats * h_c).sum(1)
    return ((g + g_c) - 2 * (ad * hd)).clamp_min(0)


def gradient_embedding_sqdist(a, feats, g, c: int) -> torch.Tensor:
    """|g_i - g_c|^2 for every row i to row c (sqdist_to of row c)."""
    return sqdist_to(a, feats, g, a[c], feats[c], g[c])


def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, uniforms: torch.Tensor) -> torch.Tensor:
    """k-means++ seeding over BADGE gradient embeddings g_i = (onehot(argmax p_i) - p_i) outer h_i.

    probs: (N, C), feats: (N, d), same float dtype; uniforms: (k - 1,) float64 in [0, 1).
    The first pick is the largest |g| (ties to the lowest index). Pick t >= 1 takes the first row whose
    float64 cumulative D^2 (index order) exceeds uniforms[t - 1] * total; if rounding puts that
    target at the total, the last row with D^2 > 0; if every D^2 is 0, the lowest unpicked row.
    Returns the picks (k,) int64.
    """
    n = probs.shape[0]
    a, g = gradient_factors(probs, feats)
    picks = []
    d2 = torch.full((n,), float("inf"), dtype=probs.dtype, device=probs.device)
    picked = torch.zeros(n, dtype=torch.bool, device=probs.device)
    for step in range(k):
        if step == 0:
            c = int(torch.argmax(g))
        else:
            cum = torch.cumsum(d2.double(), 0)
            total = cum[-1]
            if total == 0:
                c = int(torch.nonzero(~picked)[0])
            else:
                c = int(torch.searchsorted(cum, uniforms[step - 1].to(cum) * total, right=True))
                if c == n:
                    c = int(torch.nonzero(d2 > 0)[-1])
        picks.append(c)
        picked[c] = True
        d2 = torch.minimum(d2, gradient_embedding_sqdist(a, feats, g, c))
        d2[c] = 0
    return torch.tensor(picks, dtype=torch.long, device=probs.device)
