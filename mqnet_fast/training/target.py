"""The target model's recipe (TrainConfig, train_model): SGD with step decay on images held on the
device (DeviceImages), whose batches are gathered by index, augmented (random crop with zero padding,
horizontal flip where the dataset allows it) and normalized on the device, or on fixed embeddings
(DeviceFeatures, standardized, not augmented) with a FeatureHead. The detectors train on it with a
loss of their own (`loss_fn`). The model comes from training/factory.py, its outputs from
training/inference.py, the loop from training/loop.py.

A target model may carry the loss-prediction module of learning loss (Yoo & Kweon, CVPR 2019) as
`model.loss_module` (make_model(..., loss_module=True)); the trainer then trains both on the loss of
the paper (cross-entropy + weight x the module's ranking loss) and `infer` also returns the
predicted loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mqnet_fast.training.features import DeviceFeatures
from mqnet_fast.training.images import DeviceImages
from mqnet_fast.training.loop import TrainingLoop, distinct_batches, head_threads, shuffled_batches
from mqnet_fast.training.optim import sgd, step_decay


BATCHING = ("fill", "distinct")


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 200
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Learning loss (used only when the model has a loss module), the published settings: the
    # ranking loss's margin xi = 1 and weight lambda = 1, and the module's inputs detached from the
    # backbone after 60% of the iterations (epoch 120 of 200).
    loss_module_margin: float = 1.0
    loss_module_weight: float = 1.0
    loss_module_detach_fraction: float = 0.6
    # Each batch as `micro_batches` equal parts, each with its own BatchNorm batch statistics, their
    # gradients summed in part order and divided by the count: the step data-parallel training on
    # that many ranks takes (train_model with a World of that size runs part r on rank r), so one
    # process reproduces a torchrun run bit for bit. Running statistics follow part 0 (DDP
    # broadcasts rank 0's buffers). 1: the whole batch at once.
    micro_batches: int = 1
    # "fill": every batch holds batch_size positions, cut from consecutive shuffles, so a set smaller
    # than a batch repeats its examples in it. "distinct": batches of min(batch_size, n) examples
    # (rounded down to a multiple of micro_batches), each shuffle cut into whole batches, so no batch
    # holds an example twice (a DataLoader with drop_last); learning loss then never pairs an example
    # with a copy of itself. A set smaller than micro_batches is batched as "fill" (one example per part).
    batching: str = "fill"

    def __post_init__(self):
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if isinstance(self.micro_batches, bool) or not isinstance(self.micro_batches, int) or self.micro_batches < 1:
            raise ValueError(f"micro_batches must be an integer >= 1, got {self.micro_batches!r}")
        if self.batch_size % self.micro_batches:
            raise ValueError(f"micro_batches ({self.micro_batches}) must divide batch_size ({self.batch_size})")
        if not 0.0 <= self.loss_module_detach_fraction <= 1.0:
            raise ValueError(f"loss_module_detach_fraction must be in [0, 1], got {self.loss_module_detach_fraction!r}")
        if self.loss_module_margin < 0 or self.loss_module_weight < 0:
            raise ValueError(f"loss_module_margin and loss_module_weight must be >= 0, got "
                             f"{self.loss_module_margin!r} and {self.loss_module_weight!r}")

    def lr_at(self, step: int) -> float:
        """lr, decayed by 0.1 at 50% and again at 75% of the iterations."""
        return step_decay(self.lr, step, (self.iterations // 2, (3 * self.iterations) // 4))

    @property
    def loss_module_detach_step(self) -> int:
        """The first step at which the loss module's inputs are detached from the backbone (120 of
        200; round() so that 0.6 x 200 is not cut to 119 by rounding)."""
        return round(self.loss_module_detach_fraction * self.iterations)


def loss_prediction_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The ranking loss of learning loss (Eq. 2 of the paper) on one mini-batch: example i is paired
    with example B-1-i (the batch against its reverse, as the published LossPredLoss does), and pair
    (i, j) costs max(0, margin - s (lhat_i - lhat_j)) with s = +1 if l_i > l_j and -1 otherwise: a
    tie counts as l_i < l_j, as the published `2 sign(max(l_i - l_j, 0)) - 1` does. Mean over the
    B // 2 pairs; with an odd B the middle example is unpaired; 0 with no pair. `target` is detached."""
    half = predicted.shape[0] // 2
    if half == 0:
        return predicted.sum() * 0.0
    predicted_diff = (predicted - predicted.flip(0))[:half]
    target_diff = (target - target.flip(0))[:half].detach()
    sign = torch.where(target_diff > 0, 1.0, -1.0).to(predicted_diff.dtype)
    return torch.clamp(margin - sign * predicted_diff, min=0).mean()


def train_model(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, index: torch.Tensor,
                labels: torch.Tensor, config: TrainConfig, seed: int, *, desc: str = "train",
                show_progress: bool = True, world=None, loss_fn=None) -> float:
    """SGD on the examples `index` (global rows of `images`) with class `labels` (same length), for
    `config.iterations` batches of `config.batch_size` drawn from consecutive shuffles of the set.
    Returns the mean cross-entropy of the last 10% of the iterations.

    A model with a `loss_module` is trained as learning loss trains it: per batch the stage outputs
    once, the logits from them, loss = mean CE + loss_module_weight x loss_prediction_loss(predicted
    loss, per-example CE); from `config.loss_module_detach_step` on, the module reads detached stage
    outputs, so only its own loss trains it and the backbone learns from the CE alone. One SGD over
    both (the published code has two SGDs with identical settings and schedules: the same updates).
    `images` may be DeviceFeatures (fixed embeddings, no augmentation) with a FeatureHead.
    `loss_fn(logits, targets)`, for a model without a loss module, replaces the mean cross-entropy
    (a detector's tempered or energy-regularized loss); the returned mean is then of loss_fn.

    With a `world` (mqnet_fast.world.World) of W > 1 ranks, every rank calls this with the
    same arguments: the model is wrapped in DistributedDataParallel, rank r computes micro-batch r
    of each batch (config.micro_batches must be W), and a communication hook sums the ranks'
    gradients in rank order: every rank ends with the model one process with micro_batches = W
    trains, bit for bit on the CPU."""
    with head_threads(model, images.images.device):
        return _train_model(model, images, index, labels, config, seed, desc=desc, show_progress=show_progress,
                            world=world, loss_fn=loss_fn)


class _Step(torch.nn.Module):
    """One forward of training as a module (what DistributedDataParallel wraps): (logits, the loss
    module's predicted loss or None)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor, detach: bool = False):
        model = self.model
        loss_module = getattr(model, "loss_module", None)
        if loss_module is None:
            return model(batch), None
        stages = model.stages(batch)
        logits = model.linear(model.pool(stages[-1]))
        return logits, loss_module([s.detach() for s in stages] if detach else stages)


def _step_loss(step: torch.nn.Module, batch: torch.Tensor, targets: torch.Tensor, config: TrainConfig,
               detach: bool, loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimize, its mean cross-entropy part) of one (micro-)batch; under learning loss
    CE + loss_module_weight x the module's ranking loss; with `loss_fn`, loss_fn(logits, targets) as both."""
    logits, predicted = step(batch, detach)
    if predicted is None:
        loss = F.cross_entropy(logits, targets) if loss_fn is None else loss_fn(logits, targets)
        return loss, loss
    if loss_fn is not None:
        raise ValueError("loss_fn replaces the cross-entropy of a model without a loss module")
    per_example = F.cross_entropy(logits, targets, reduction="none")
    target_loss = per_example.mean()
    ranking = loss_prediction_loss(predicted.float(), per_example.float(), config.loss_module_margin)
    return target_loss + config.loss_module_weight * ranking, target_loss


def _train_model(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, index: torch.Tensor,
                 labels: torch.Tensor, config: TrainConfig, seed: int, *, desc: str, show_progress: bool,
                 world=None, loss_fn=None) -> float:
    device = images.images.device
    generator = torch.Generator().manual_seed(seed)
    optimizer = sgd(model.parameters(), config.lr, config.momentum, config.weight_decay)
    labels = labels.to(device)
    parts = config.micro_batches
    batch_size = config.batch_size
    if config.batching == "distinct" and len(index) >= parts:
        batch_size = min(batch_size, len(index) - len(index) % parts)  # equal micro-batches
        batches = distinct_batches(len(index), batch_size, generator)
    else:
        batches = shuffled_batches(len(index), batch_size, generator)
    size = batch_size // parts
    loop = TrainingLoop(model, optimizer, device, parts=parts, world=world, divide=True, module=_Step(model),
                        what=f"to train on {world.size if world else 1} ranks (rank r computes micro-batch r)")
    tail_losses = []

    def step(i: int) -> None:
        rows = next(batches)
        batch, targets = images.augmented_batch(index[rows], generator), labels[rows.to(device)]
        detach = i >= config.loss_module_detach_step
        reported = loop.each(lambda runner, k: _step_loss(runner, batch[k * size:(k + 1) * size],
                                                         targets[k * size:(k + 1) * size], config, detach, loss_fn))
        if i >= config.iterations - max(1, config.iterations // 10):
            tail_losses.append(loop.mean(reported))

    loop.run(config.iterations, config.lr_at, step, desc=desc, show_progress=show_progress)
    return float(torch.stack(tail_losses).float().mean()) if tail_losses else float("nan")
