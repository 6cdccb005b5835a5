"""Training and inference of the target model on images held on the device (DeviceImages): batches
are gathered by index, augmented (random crop with zero padding, horizontal flip where the dataset
allows it) and normalized on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.models import ResNet18
from mqnet_fast.training.images import DeviceImages
from mqnet_fast.training.optim import set_lr, sgd, step_decay
from mqnet_fast.progress import progress_bar


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 200
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def lr_at(self, step: int) -> float:
        """lr, decayed by 0.1 at 50% and again at 75% of the iterations."""
        return step_decay(self.lr, step, (self.iterations // 2, (3 * self.iterations) // 4))


def make_model(num_classes: int, in_channels: int, device: torch.device, seed: int) -> ResNet18:
    """A freshly initialized ResNet-18; its initial weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet18(num_classes, in_channels)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _shuffled_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless batches of `batch_size` positions in 0..n-1, cut from consecutive random permutations
    (a batch may span two permutations; with n < batch_size a batch repeats examples). A new
    permutation is drawn as soon as the last one is used up, before the batch is handed out."""
    pending = torch.randperm(n, generator=generator)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        batch, pending = pending[:batch_size], pending[batch_size:]
        if len(pending) == 0:
            pending = torch.randperm(n, generator=generator)
        yield batch


def train_model(model: torch.nn.Module, images: DeviceImages, index: torch.Tensor, labels: torch.Tensor,
                config: TrainConfig, seed: int, *, desc: str = "train", show_progress: bool = True) -> float:
    """SGD on the examples `index` (global rows of `images`) with class `labels` (same length), for
    `config.iterations` batches of `config.batch_size` drawn from consecutive shuffles of the set.
    Returns the mean loss of the last 10% of the iterations."""
    device = images.images.device
    generator = torch.Generator().manual_seed(seed)
    optimizer = sgd(model.parameters(), config.lr, config.momentum, config.weight_decay)
    labels = labels.to(device)
    batches = _shuffled_batches(len(index), config.batch_size, generator)
    tail_losses = []
    model.train()
    for step in progress_bar(range(config.iterations), desc=desc, disable=not show_progress):
        rows = next(batches)
        set_lr(optimizer, config.lr_at(step))
        with _autocast(device):
            loss = F.cross_entropy(model(images.augmented_batch(index[rows], generator)), labels[rows.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= config.iterations - max(1, config.iterations // 10):
            tail_losses.append(loss.detach())
    return float(torch.stack(tail_losses).float().mean()) if tail_losses else float("nan")


@torch.no_grad()
def infer(model: torch.nn.Module, images: DeviceImages, index: torch.Tensor | None = None,
          batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, K) and penultimate features (n, 512), float32 on the images' device, for the rows
    `index` (all rows if None), in eval mode."""
    model.eval()
    device = images.images.device
    index = torch.arange(len(images)) if index is None else index
    logits, feats = [], []
    for start in range(0, len(index), batch_size):
        with _autocast(device):
            out, feat = model.forward_with_features(images.batch(index[start:start + batch_size]))
        logits.append(out.float())
        feats.append(feat.float())
    if not logits:
        return torch.zeros(0, model.linear.out_features, device=device), torch.zeros(0, 512, device=device)
    return torch.cat(logits), torch.cat(feats)
