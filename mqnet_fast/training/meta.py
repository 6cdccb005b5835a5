"""Training MQ-Net's meta-model Phi (mqnet_fast.models.MetaModel) with the ranking loss of the paper
(Eq. 10) on the examples it queried, on meta-inputs standardized by the strategy
(mqnet_fast.strategies.mqnet)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mqnet_fast import ops
from mqnet_fast.models.meta_model import MetaModel
# Eq. 10 of the paper on one mini-batch; the definition lives with the op's reference loop
from mqnet_fast.reference.nonneg_mlp_rank_train import ranking_loss  # noqa: F401
from mqnet_fast.training.optim import step_decay


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
    """Defaults: the "momentum" recipe; the strategy builds its config from its meta_optimizer."""
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
                     seed: int, backend: str = "auto") -> MetaTrainStats:
    """Train Phi on a query set: z (n, k) standardized meta-inputs, targets (n,) the masked
    cross-entropy of the target model (0 for OOD examples). SGD with the config's lr, momentum and
    weight decay (MQ-Net's recipes: mqnet_fast.strategies.mqnet.META_OPTIMIZERS), lr x0.1 at half the
    epochs, the weights projected onto W >= 0 after every step. An epoch is max(ceil(n / batch),
    min_steps_per_epoch) steps, each on a random mini-batch of min(batch, n) distinct examples: with
    a query set of a few dozen examples, "100 epochs" of ceil(n / batch) steps would be a few hundred
    steps, too few for Phi to move (the published code loops over the query until an epoch has at
    least 100 steps).

    All mini-batches and per-step learning rates are drawn up front and the whole loop runs in one
    call of ops.nonneg_mlp_rank_train (compiled; `backend="torch"` runs the same steps eagerly with
    autograd and torch.optim.SGD, to float tolerance the same parameters)."""
    z = z.detach().float().cpu()
    targets = targets.detach().float().cpu()
    n = z.shape[0]
    if n < 2:
        return MetaTrainStats(float("nan"), float("nan"), 0)
    generator = torch.Generator().manual_seed(seed)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(math.ceil(n / config.batch_size), config.min_steps_per_epoch)
    batches = torch.cat([torch.argsort(torch.rand(steps_per_epoch, n, generator=generator), dim=1)[:, :batch]
                         for _ in range(config.epochs)])
    lr = torch.tensor([step_decay(config.lr, epoch, (config.epochs // 2,))
                       for epoch in range(config.epochs) for _ in range(steps_per_epoch)])
    result = ops.nonneg_mlp_rank_train(z, targets, batches, lr, model.weights, model.biases,
                                       momentum=config.momentum, weight_decay=config.weight_decay,
                                       margin=config.margin, backend=backend)
    with torch.no_grad():
        for param, trained in zip(model.weights + model.biases, result.weights + result.biases):
            param.copy_(trained)
    model.eval()
    with torch.no_grad():
        accuracy = ranking_accuracy(model(z), targets)
    return MetaTrainStats(float(result.losses[-steps_per_epoch:].mean()), accuracy, config.epochs * steps_per_epoch)
