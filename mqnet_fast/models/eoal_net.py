"""EOAL's detector network (Safaei et al., AAAI 2024; trained by mqnet_fast.strategies.eoal)."""
from __future__ import annotations

import torch


class EOALNet(torch.nn.Module):
    """A K + 1-class backbone and K one-vs-rest heads on its features; forward returns the
    concatenation [K + 1 logits | 2K head logits | features] (what the loss splits)."""

    def __init__(self, backbone: torch.nn.Module, num_classes: int, seed: int):
        super().__init__()
        self.backbone = backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.ova = torch.nn.Linear(backbone.feature_dim, 2 * num_classes, bias=False)
        self.ova.to(next(backbone.parameters()).device)
        self.num_classes = num_classes

    def forward(self, x):
        logits, feats = self.backbone.forward_with_features(x)
        return torch.cat([logits, self.ova(feats), feats], 1)

    def heads(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, 2, K) one-vs-rest probabilities: [:, 1] "class j", [:, 0] "not class j"."""
        return torch.softmax(self.ova(feats).float().view(-1, 2, self.num_classes), 1)
