"""Informativeness from the target model's softmax: CONF, ENTROPY, MARGIN."""
from __future__ import annotations

import torch

from mqnet_fast.scores import register_informativeness


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


register_informativeness("conf", inputs=("probs",))(lambda view: least_confidence(view.probs))
register_informativeness("entropy", inputs=("probs",))(lambda view: entropy(view.probs))
register_informativeness("margin", inputs=("probs",))(lambda view: negative_margin(view.probs))
