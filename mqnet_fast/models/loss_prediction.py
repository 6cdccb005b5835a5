"""The loss-prediction module of learning loss (Yoo & Kweon, "Learning Loss for Active Learning",
CVPR 2019, Fig. 2): it reads the target model's stage outputs and predicts each example's loss."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


class LossPredictionModule(nn.Module):
    """Per stage: global average pool -> FC `hidden` -> ReLU; the stages' vectors concatenated ->
    FC 1. forward(stages) takes the list of stage outputs (B, C_s, H_s, W_s), one per entry of
    `stage_channels` (ResNet18.stages gives them), and returns the predicted loss (B,).

    The published module pools with AvgPool2d of the stage's spatial size (32, 16, 8, 4 on CIFAR),
    which is the global average; this one pools globally, so any input size works."""

    def __init__(self, stage_channels: Sequence[int], hidden: int = 128):
        super().__init__()
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.hidden = nn.ModuleList(nn.Linear(c, hidden) for c in self.stage_channels)
        self.linear = nn.Linear(len(self.stage_channels) * hidden, 1)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(stages) != len(self.hidden):
            raise ValueError(f"stages holds {len(stages)} tensors, expected {len(self.hidden)} "
                             f"(one per stage of channels {self.stage_channels})")
        pooled = [F.relu(fc(torch.flatten(F.adaptive_avg_pool2d(stage, 1), 1))) for fc, stage in zip(self.hidden, stages)]
        return self.linear(torch.cat(pooled, 1)).view(-1)
