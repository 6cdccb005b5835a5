"""MQ-Net's meta-model Phi: a non-negative MLP over z = <P(x), I(x)>, trained with the ranking loss
of the paper (Eq. 10) on the examples it queried.

Standardization (one rule, used at training and at selection time): in every round z is computed
for all unlabeled pool examples and each column is standardized with that round's mean and std over
those candidates. The query set is a subset of the candidates, so Phi is trained on exactly the
standardized values it was scored with, and applied in the next round to values standardized the same
way. (The published code standardizes one input and not the other; this one does both, always.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from mqnet_fast import ops


class MetaModel(nn.Module):
    """Phi: inputs (N, k) -> hidden (sigmoid) -> one score, weights used as relu(W), so that
    z_i >= z_j componentwise implies Phi(z_i) >= Phi(z_j) (the skyline constraint) by construction.
    Weights are initialized non-negative (a negative weight would be clamped to 0 and get no gradient)."""

    def __init__(self, in_features: int = 2, hidden: int = 64, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer in (self.hidden, self.out):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * bound)
                layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)

    @property
    def weights(self) -> list[torch.Tensor]:
        return [self.hidden.weight, self.out.weight]

    @property
    def biases(self) -> list[torch.Tensor]:
        return [self.hidden.bias, self.out.bias]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable scores (N,) of standardized meta-inputs z (N, k); the values are those of
        mqnet_fast.reference.nonneg_mlp_score (and of the fused op).

        The weights enter as relu(W) with a straight-through gradient: d relu(W)/dW is taken as 1,
        not 0, for W < 0. With the plain relu gradient a weight that SGD pushes below 0 gets no
        gradient again and stays dead; on a small, noisy query set most output weights die within a
        few hundred steps and Phi becomes a constant (ranking loss stuck at the margin)."""
        h = z
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = F.linear(h, w.clamp_min(0).detach() + (w - w.detach()), b)
            if i < len(self.weights) - 1:
                h = torch.sigmoid(h)
        return h.squeeze(1)

    @torch.no_grad()
    def score(self, z: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
        """Scores (N,) of a whole pool through the fused op, standardizing z with (mean, std) in it."""
        params = [p.to(z.device) for p in self.weights], [p.to(z.device) for p in self.biases]
        return ops.nonneg_mlp_score(z, *params, mean=mean, std=std, backend=backend)


def ranking_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Eq. 10 of the paper on one mini-batch: the batch (already shuffled) is split in halves and
    example i of the first half is paired with example i of the second; each pair costs
    max(0, margin - sign(l_i - l_j) (Phi_i - Phi_j)). Pairs with equal targets (two OOD examples,
    both with loss 0) carry no order and are left out; the loss is the mean over the other pairs
    (0 if there are none). An odd last example is unpaired."""
    half = scores.shape[0] // 2
    sign = torch.sign(targets[:half] - targets[half:2 * half])
    cost = torch.clamp(margin - sign * (scores[:half] - scores[half:2 * half]), min=0) * (sign != 0)
    return cost.sum() / (sign != 0).sum().clamp_min(1)


@torch.no_grad()
def ranking_accuracy(scores: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of the pairs (i, j) with targets l_i != l_j that Phi orders the same way
    (sign(Phi_i - Phi_j) == sign(l_i - l_j)); nan when no pair has distinct targets."""
    agree = total = 0
    for start in range(0, scores.shape[0], chunk):
        ds = scores[start:start + chunk, None] - scores[None, :]
        dt = targets[start:start + chunk, None] - targets[None, :]
        ordered = dt > 0  # each unordered pair counted once, from its larger-target side
        agree += int((ordered & (ds > 0)).sum())
        total += int(ordered.sum())
    return agree / total if total else float("nan")


@dataclass(frozen=True)
class MetaTrainConfig:
    epochs: int = 100
    batch_size: int = 64
    min_steps_per_epoch: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    margin: float = 0.1


@dataclass
class MetaTrainStats:
    loss: float           # mean ranking loss over the last epoch
    rank_accuracy: float  # on all query-set pairs with distinct targets, after training
    steps: int


def train_meta_model(model: MetaModel, z: torch.Tensor, targets: torch.Tensor, config: MetaTrainConfig,
                     seed: int) -> MetaTrainStats:
    """Train Phi on a query set: z (n, k) standardized meta-inputs, targets (n,) the masked
    cross-entropy of the target model (0 for OOD examples). SGD with momentum and weight decay, lr
    x0.1 at half the epochs. An epoch is max(ceil(n / batch), min_steps_per_epoch) steps, each on a
    random mini-batch of min(batch, n) distinct examples: with a query set of a few dozen examples,
    "100 epochs" of ceil(n / batch) steps would be a few hundred steps, too few for Phi to move
    (the published code also runs at least 100 steps per epoch)."""
    z = z.detach().float().cpu()
    targets = targets.detach().float().cpu()
    n = z.shape[0]
    if n < 2:
        return MetaTrainStats(float("nan"), float("nan"), 0)
    generator = torch.Generator().manual_seed(seed)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(math.ceil(n / config.batch_size), config.min_steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    model.train()
    last_epoch = torch.zeros(steps_per_epoch)
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (0.1 if epoch >= config.epochs // 2 else 1.0)
        batches = torch.argsort(torch.rand(steps_per_epoch, n, generator=generator), dim=1)[:, :batch]
        for step in range(steps_per_epoch):
            rows = batches[step]
            loss = ranking_loss(model(z[rows]), targets[rows], config.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last_epoch[step] = loss.detach()
    model.eval()
    with torch.no_grad():
        accuracy = ranking_accuracy(model(z), targets)
    return MetaTrainStats(float(last_epoch.mean()), accuracy, config.epochs * steps_per_epoch)
