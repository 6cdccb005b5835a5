"""Optimizers (SGD; LARS for the contrastive encoder) and learning-rate schedules: the one place every
trainer takes them from."""
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


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) over SGD with momentum, as CSI trains (torchlars' LARS wrapping
    torch.optim.SGD). Per parameter tensor w with gradient g, in a group with `adapt` set:

        d = g + weight_decay * w
        d = d * trust_coefficient * |w| / (|g| + weight_decay * |w| + eps)   (if |w| > 0 and |g| > 0)
        buf = momentum * buf + d   (buf = d at the first step);   w = w - lr * buf

    In a group with `adapt` False the update is plain SGD with momentum on g + weight_decay * w
    (give such a group weight_decay 0: `lars` does, for biases and normalization parameters).
    The denominator |g| + wd |w| is torchlars'; SimCLR's own LARS uses |g + wd w| and folds the lr
    into the momentum buffer (the same step while the lr is constant)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient < 0 or eps < 0:
            raise ValueError(f"LARS: lr, momentum, weight_decay, trust_coefficient and eps must be >= 0, got "
                             f"{lr}, {momentum}, {weight_decay}, {trust_coefficient}, {eps}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                update = grad.add(p, alpha=wd) if wd != 0 else grad.clone()
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    update.mul_(torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio)))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(momentum).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def lars(model: torch.nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
         trust_coefficient: float = 0.001, *, exclude_bias_and_norm: bool = True) -> LARS:
    """LARS over a model's parameters. With exclude_bias_and_norm (SimCLR's choice), biases and
    normalization parameters (every tensor with fewer than 2 dimensions) get neither weight decay
    nor the trust ratio; without it (CSI's torchlars setup) every tensor gets both."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_and_norm:
        return LARS(params, lr, momentum, weight_decay, trust_coefficient)
    groups = [{"params": [p for p in params if p.ndim >= 2]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "adapt": False}]
    return LARS([g for g in groups if g["params"]], lr, momentum, weight_decay, trust_coefficient)
