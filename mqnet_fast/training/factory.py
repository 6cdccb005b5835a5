"""The target model's factory: a freshly initialized ResNet-18 over images or FeatureHead over
embeddings (optionally carrying learning loss's module), its architecture for a data holder, a fresh
model shaped like another (the detectors'), and what one training of it takes in memory."""
from __future__ import annotations

import torch

from mqnet_fast.models import FeatureHead, LossPredictionModule, ResNet18
from mqnet_fast.training.features import DeviceFeatures
from mqnet_fast.training.images import DeviceImages


ARCHS = ("resnet18", "head")


def model_arch(images: DeviceImages | DeviceFeatures) -> str:
    """The target model's architecture for a data holder: "head" on embeddings, else "resnet18"."""
    return "head" if isinstance(images, DeviceFeatures) else "resnet18"


def estimate_train_bytes(arch: str, sample_shape: tuple, num_classes: int, width: int, batch_size: int,
                         infer_batch: int = 0) -> int:
    """An estimate of the memory one training of the target model takes beyond its data: the
    parameters with their gradients, momentum and one copy (16 bytes each) and the activations
    autograd keeps for a batch of float32 examples of `sample_shape` (a ResNet-18 keeps about 25
    tensors of width x H x W floats per example summed over its stages, each half the size of the
    one before it), or an inference batch of `infer_batch`, whichever is more. An order of magnitude, for refusing what cannot fit before anything is
    allocated (a width or batch size off by orders), not for planning."""
    if arch == "resnet18":
        height, wide = sample_shape[-2], sample_shape[-1]
        params = 11_200_000 * (width / 64) ** 2 + 8 * width * num_classes
        per_example = 25 * width * height * wide * (1 + 1 / 2 + 1 / 4 + 1 / 8) + 3 * sample_shape[0] * height * wide
    else:
        dim = sample_shape[-1]
        hidden = width or 0
        params = (dim * hidden + hidden * num_classes) if hidden else dim * num_classes
        per_example = 3 * (dim + hidden + num_classes)
    # inference (no autograd) keeps a few of a batch's activations at a time: about a tenth
    return int(16 * params + 4 * max(batch_size * per_example, infer_batch * per_example / 10))


def make_model(num_classes: int, in_channels: int, device: torch.device, seed: int, *,
               loss_module: bool = False, width: int = 64, arch: str = "resnet18") -> ResNet18 | FeatureHead:
    """A freshly initialized target model; its initial weights depend only on `seed`. arch
    "resnet18": a ResNet-18 of `width` over `in_channels`-channel images; arch "head": a FeatureHead
    over `in_channels`-dim embeddings with a hidden layer of `width` units (0: linear). With
    `loss_module`, it carries a LossPredictionModule as the registered submodule `model.loss_module`
    (so model.parameters() and the one optimizer of train_model cover both), initialized after the
    model from the same seed: the model starts from the same weights as without it."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "resnet18":
            model = ResNet18(num_classes, in_channels, width)
        else:
            model = FeatureHead(in_channels, num_classes, width)
        if loss_module:
            model.loss_module = LossPredictionModule(model.stage_channels)
    model = model.to(device)
    if arch == "resnet18":  # channels-last on every device (DeviceImages)
        model = model.to(memory_format=torch.channels_last)
    return model


def model_like(model: torch.nn.Module, num_classes: int, in_channels: int, device: torch.device, seed: int,
               images) -> torch.nn.Module:
    """A fresh model of `model`'s architecture and width with `num_classes` outputs (weights from `seed`)."""
    arch = model_arch(images)
    if isinstance(model, FeatureHead):
        width = model.stage_channels[1] if len(model.stage_channels) > 1 else 0
    else:
        width = model.stage_channels[0]
    return make_model(num_classes, in_channels, device, seed, width=width, arch=arch)
