"""A split's images held on the device as one uint8 tensor, gathered, augmented and normalized there
(no DataLoader and no worker processes)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
        # channels-last (NHWC) batches, as the models are laid out: oneDNN's convolutions on the CPU
        # are faster so too (the digits CSI encoder's step 1.25x with AVX2, 1.2x with AVX-512 at 1
        # thread: benchmarks/engine/digits_step_time.py, which sets this False for its NCHW runs), and so
        # are cuDNN's.
        self.channels_last = True

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
