"""Per-example scores: purity P(x) and informativeness I(x) (higher = more worth labeling)."""
from __future__ import annotations

import torch

from mqnet_fast import ops

INFORMATIVENESS = ("conf", "entropy", "margin")


def purity(feats: torch.Tensor, labeled_in_feats: torch.Tensor) -> torch.Tensor:
    """P(x): max cosine similarity of each row of `feats` (n, d) to the labeled IN examples'
    embeddings (m, d), through the nearest-set op. With no labeled IN example every purity is 0."""
    if labeled_in_feats.shape[0] == 0:
        return torch.zeros(feats.shape[0], dtype=torch.float32, device=feats.device)
    values, _ = ops.nearest(feats, labeled_in_feats, metric="cosine")
    return values.float()


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - max softmax (CONF)."""
    return 1.0 - probs.max(1).values


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """-sum p log p of the softmax (ENTROPY); 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(1)


def negative_margin(probs: torch.Tensor) -> torch.Tensor:
    """-(p_top1 - p_top2) (MARGIN: a small margin is informative)."""
    if probs.shape[1] < 2:
        return torch.zeros(probs.shape[0], device=probs.device)
    top2 = probs.topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def informativeness(probs: torch.Tensor, kind: str) -> torch.Tensor:
    """I(x) of the given kind: "conf" (1 - max softmax), "entropy" or "margin"."""
    if kind == "conf":
        return least_confidence(probs)
    if kind == "entropy":
        return entropy(probs)
    if kind == "margin":
        return negative_margin(probs)
    raise ValueError(f"informativeness must be one of {INFORMATIVENESS}, got {kind!r}")
