"""The target model: CIFAR-style ResNet-18 (3x3 stem, no max-pool), any input size from 8x8 up."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Conv2d(nn.Conv2d):
    """nn.Conv2d that computes a convolution with one output position whose window covers the whole
    (zero-padded) input as the linear map it is, on the CPU: out = W[:, :, taps that meet the input]
    . x. The padding's taps multiply zeros, so the value is the same sum (rounded in another order)
    and their weight gradients are zero either way. On 8x8 images this is the last stage (1x1
    maps) and the stride-2 convolution into it, where oneDNN's weight gradient ran im2col and a GEMM
    nine times the size (a fifth of a digits training step with AVX2: docs/engine.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.padding, str) or x.dim() != 4:  # "same" / "valid", or an unbatched input
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h, w = x.shape[-2:]
        whole = (x.device.type == "cpu" and self.groups == 1 and self.dilation == (1, 1)
                 and self.padding_mode == "zeros"
                 and (h + 2 * ph - kh) // sh == 0 and (w + 2 * pw - kw) // sw == 0 and h <= kh - ph and w <= kw - pw)
        if not whole:
            return super().forward(x)
        weight = self.weight[:, :, ph:ph + h, pw:pw + w].flatten(1)
        return F.linear(x.flatten(1), weight, self.bias).view(x.shape[0], self.out_channels, 1, 1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images. forward(x) -> logits (B, num_classes); features(x) -> (B, feature_dim),
    the penultimate (pooled) features the strategies use; stages(x) -> the four stage outputs (what
    the loss-prediction module of learning loss reads). `width` is the first stage's channel count
    (64 in the standard network; the stages have width, 2, 4 and 8 times that)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        self.stage_channels = tuple(width * m for m in (1, 2, 4, 8))
        for planes, stride in zip(self.stage_channels, (1, 2, 2, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.feature_dim = self.stage_channels[-1]
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            outs.append(out)
        return outs

    @staticmethod
    def pool(stage: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(stage, 1), 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x)[-1])

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.linear(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
