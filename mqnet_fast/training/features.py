"""A split's fixed embeddings held on the device, with the interface of DeviceImages (`images`,
`batch`, `augmented_batch`, `len`), so the target trainer and `infer` run on them unchanged."""
from __future__ import annotations

import numpy as np
import torch


class DeviceFeatures:
    """A split's embeddings (N, d) as given, one float32 tensor on `device` (`images`: the name
    DeviceImages gives its own, since the trainer reads `images.images` for the device and
    `images.images.shape[1]` for the model's input width), standardized per feature with `mean`
    and `std` (the training split's: `feature_stats`) in each batch, as DeviceImages normalizes.

    There is no augmentation of a fixed embedding: `augmented_batch` is `batch` (and draws nothing
    from the generator)."""
    flip = False

    def __init__(self, feats: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device):
        self.images = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(device)
        self.mean = mean.float().to(device).view(1, -1)
        self.std = std.float().to(device).view(1, -1)

    def __len__(self) -> int:
        return self.images.shape[0]

    @staticmethod
    def feature_stats(feats: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std (d,) float32 of `feats` (N, d), computed in float64; a constant
        feature gets std 1 (it becomes 0 everywhere rather than a division by 0)."""
        values = torch.from_numpy(np.ascontiguousarray(feats)).double()
        mean = values.mean(0)
        std = values.std(0) if values.shape[0] > 1 else torch.zeros_like(mean)
        return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()

    def given(self, index: torch.Tensor) -> torch.Tensor:
        """The rows `index` as given (not standardized)."""
        return self.images[index.to(self.images.device)]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """The rows `index`, standardized."""
        return (self.given(index) - self.mean) / self.std

    def augmented_batch(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.batch(index)
