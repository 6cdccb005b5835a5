"""Inference of the target model (or a detector) on the rows of a data holder, in eval mode: logits,
penultimate features and learning loss's predicted loss (`infer`), or the pooled stage outputs
(`infer_stages`)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from mqnet_fast.training.features import DeviceFeatures
from mqnet_fast.training.images import DeviceImages
from mqnet_fast.training.loop import device_autocast, head_threads


class Inference(NamedTuple):
    logits: torch.Tensor                   # (n, K)
    feats: torch.Tensor                    # (n, d) penultimate features
    predicted_loss: torch.Tensor | None    # (n,) the loss module's output; None without a module


@torch.no_grad()
def infer(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, index: torch.Tensor | None = None,
          batch_size: int = 1024) -> Inference:
    """Logits (n, K), penultimate features (n, d) and, if the model has a loss module, the predicted
    loss (n,), float32 on the images' device, for the rows `index` (all rows if None), in eval mode."""
    with head_threads(model, images.images.device):
        return _infer(model, images, index, batch_size)


def _infer(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, index: torch.Tensor | None,
           batch_size: int) -> Inference:
    model.eval()
    device = images.images.device
    index = torch.arange(len(images)) if index is None else index
    loss_module = getattr(model, "loss_module", None)
    logits, feats, predicted = [], [], []
    for start in range(0, len(index), batch_size):
        with device_autocast(device):
            batch = images.batch(index[start:start + batch_size])
            if loss_module is None:
                out, feat = model.forward_with_features(batch)
            else:
                stages = model.stages(batch)
                feat = model.pool(stages[-1])
                out = model.linear(feat)
                predicted.append(loss_module(stages).float())
        logits.append(out.float())
        feats.append(feat.float())
    if not logits:
        return Inference(torch.zeros(0, model.linear.out_features, device=device),
                         torch.zeros(0, model.feature_dim, device=device),
                         None if loss_module is None else torch.zeros(0, device=device))
    return Inference(torch.cat(logits), torch.cat(feats), None if loss_module is None else torch.cat(predicted))


@torch.no_grad()
def infer_stages(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, index: torch.Tensor,
                 batch_size: int = 1024) -> list[torch.Tensor]:
    """The stage outputs of the rows `index` (a ResNet-18's four, a FeatureHead's one or two),
    globally average-pooled: (n, c_s) float32 each, on the images' device, in eval mode."""
    with head_threads(model, images.images.device):
        return _infer_stages(model, images, index, batch_size)


def _infer_stages(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, index: torch.Tensor,
                  batch_size: int) -> list[torch.Tensor]:
    model.eval()
    device = images.images.device
    pooled = [[torch.zeros(0, c, device=device)] for c in model.stage_channels]
    for start in range(0, len(index), batch_size):
        with device_autocast(device):
            stages = model.stages(images.batch(index[start:start + batch_size]))
        for out, stage in zip(pooled, stages):
            out.append(model.pool(stage).float())
    return [torch.cat(out) for out in pooled]
