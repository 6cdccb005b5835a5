"""Training and inference of the target model on uint8 image arrays held on the device.

No DataLoader and no worker processes: the images live on the device as one uint8 tensor, batches are
gathered by index, augmented (random crop with zero padding, horizontal flip where the dataset
allows it) and normalized on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.models import ResNet18
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
        return self.lr * (0.1 ** ((step >= self.iterations // 2) + (step >= (3 * self.iterations) // 4)))


class DeviceImages:
    """A split's images as a (N, C, H, W) uint8 tensor on `device`, with the per-channel mean and std
    (of the training images, in 0..1 units) used to normalize them."""

    def __init__(self, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                 flip: bool):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        self.flip = flip
        self.pad = max(1, self.images.shape[-1] // 8)  # 4 for 32x32 (the usual CIFAR crop), 1 for 8x8
        self.channels_last = device.type == "cuda"

    def __len__(self) -> int:
        return self.images.shape[0]

    @staticmethod
    def channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, images.shape[-1]).double() / 255.0
        return pixels.mean(0).float(), pixels.std(0).clamp_min(1e-3).float()

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        out = (batch.float() / 255.0 - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self._normalize(self.images[index.to(self.images.device)])

    def augmented_batch(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (zero padding `pad`, offsets uniform in 0..2 pad) and, if allowed, a random
        horizontal flip per image; random numbers come from the CPU `generator`."""
        batch = self.images[index.to(self.images.device)]
        n, _, h, w = batch.shape
        p = self.pad
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(batch.device)
        padded = F.pad(batch, (p, p, p, p))
        rows = (offsets[0][:, None] + torch.arange(h, device=batch.device))[:, None, :, None]
        cols = (offsets[1][:, None] + torch.arange(w, device=batch.device))[:, None, None, :]
        if self.flip:
            flips = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
            cols = torch.where(flips[:, None, None, None], cols.flip(-1), cols)
        batch = padded[torch.arange(n, device=batch.device)[:, None, None, None],
                       torch.arange(batch.shape[1], device=batch.device)[None, :, None, None], rows, cols]
        return self._normalize(batch)


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
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    labels = labels.to(device)
    batches = _shuffled_batches(len(index), config.batch_size, generator)
    tail_losses = []
    model.train()
    for step in progress_bar(range(config.iterations), desc=desc, disable=not show_progress):
        rows = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
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
