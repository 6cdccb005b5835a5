from __future__ import annotations

import torch


def fl_gains(ground: torch.Tensor, candidates: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
             ground2: torch.Tensor | None = None, candidates2: torch.Tensor | None = None,
             chunk: int = 256) -> torch.Tensor:
    """Saturated facility-location gains, the definition: for every candidate j,
    gain_j = sum_i max(min(s_ij, hi_i) - lo_i, 0) with s_ij = ground_i . candidates_j (times
    ground2_i . candidates2_j when given), summed over the ground rows i in the input dtype.
    Materializes (n, chunk) similarity blocks, `chunk` candidates at a time."""
    out = []
    for start in range(0, candidates.shape[0], chunk):
        sim = ground @ candidates[start:start + chunk].T
        if ground2 is not None:
            sim = sim * (ground2 @ candidates2[start:start + chunk].T)
        out.append((torch.minimum(sim, hi[:, None]) - lo[:, None]).clamp_min(0).sum(0))
    return torch.cat(out) if out else ground.new_zeros(0)
