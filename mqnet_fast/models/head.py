"""The target model on fixed embeddings: a linear classifier or a one-hidden-layer MLP."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class FeatureHead(nn.Module):
    """A head over (B, in_dim) embeddings with ResNet18's interface, so the target trainer, `infer`
    and learning loss use it unchanged.

    hidden = 0: linear, logits = linear(x); the penultimate features are the input embedding.
    hidden > 0: logits = linear(relu(hidden(x))); the penultimate features are the hidden activations.

    stages(x) -> the outputs from the embedding on, each (B, C_s, 1, 1) (the layout of ResNet18's
    stage outputs, which the loss-prediction module pools): the input embedding, then, with a hidden
    layer, its activations. The embedding is the last stage of the frozen encoder that made it, so
    learning loss reads it as it reads a ResNet's stages; without a hidden layer it is all there is."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        if in_dim < 1 or num_classes < 1 or hidden < 0:
            raise ValueError(f"FeatureHead needs in_dim >= 1, num_classes >= 1 and hidden >= 0, got "
                             f"{in_dim}, {num_classes}, {hidden}")
        self.in_dim = int(in_dim)
        self.hidden = nn.Linear(in_dim, hidden) if hidden > 0 else None
        self.feature_dim = int(hidden) if hidden > 0 else self.in_dim
        self.stage_channels = (self.in_dim,) if hidden == 0 else (self.in_dim, int(hidden))
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        if self.hidden is not None:
            outs.append(F.relu(self.hidden(x)))
        return [out[:, :, None, None] for out in outs]

    @staticmethod
    def pool(stage: torch.Tensor) -> torch.Tensor:
        return torch.flatten(stage, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.hidden(x)) if self.hidden is not None else x

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.linear(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
