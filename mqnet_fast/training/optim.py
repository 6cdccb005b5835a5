"""Optimizers and learning-rate schedules: the one place every trainer takes them from."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch


def sgd(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with (non-Nesterov) momentum and L2 weight decay, as every paper here trains."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def step_decay(base_lr: float, step: int, milestones: Sequence[int], factor: float = 0.1) -> float:
    """base_lr times `factor` once for every milestone already reached (step >= milestone)."""
    return base_lr * (factor ** sum(step >= m for m in milestones))


def warmup_cosine(base_lr: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up from base_lr / warmup to base_lr over `warmup` steps, then cosine decay to 0
    at `total` (SimCLR's and CSI's schedule)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
