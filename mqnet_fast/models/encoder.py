"""CSI's contrastive encoder (Tack et al., "CSI: Novelty Detection via Contrastive Learning on
Distributionally Shifted Instances", NeurIPS 2020), the embedding MQ-Net measures purity in: the
project's ResNet-18 as backbone, SimCLR's projection head and CSI's shift-classification head."""
from __future__ import annotations

import torch
from torch import nn

from mqnet_fast.models.resnet import ResNet18

NUM_ROTATIONS = 4  # CSI's shifting transformations: rotations by 0, 90, 180 and 270 degrees


class ContrastiveEncoder(nn.Module):
    """features(x) -> (B, d) penultimate features of the backbone (d = 8 * width);
    project(feats) -> (B, projection_dim) the projection head's output, NOT normalized (CSI's
    "simclr" layer: the contrastive loss normalizes it, CSI's detection score uses its norm);
    shift_logits(feats) -> (B, 4) which of the 4 rotations the input was turned by.

    The backbone's classification layer is not used (an Identity), so the state dict holds only
    what the contrastive objective trains."""

    def __init__(self, in_channels: int = 3, width: int = 64, projection_dim: int = 128):
        super().__init__()
        self.backbone = ResNet18(1, in_channels, width)
        self.backbone.linear = nn.Identity()
        d = self.backbone.feature_dim
        self.feature_dim = d
        self.projection_dim = projection_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, projection_dim))
        self.shift_head = nn.Linear(d, NUM_ROTATIONS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return self.projection(feats)

    def shift_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.shift_head(feats)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(penultimate features, projection (unnormalized), shift logits) of a batch."""
        feats = self.features(x)
        return feats, self.project(feats), self.shift_logits(feats)
