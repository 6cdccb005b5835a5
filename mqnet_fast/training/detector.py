"""Detectors of the open-set methods (LfOSA, EAOA; EOAL builds its own on factory.model_like): a freshly initialized copy of the target model's
architecture with one more class, trained on the labeled examples, IN ones with their class and OOD
ones as the extra class K, on the target model's recipe (TrainConfig) with a loss of the method's."""
from __future__ import annotations

from typing import Callable

import torch

from mqnet_fast.training.factory import model_like
from mqnet_fast.training.target import TrainConfig, train_model


def train_detector(view, config: TrainConfig, seed: int, loss_fn: Callable | None = None, *,
                   desc: str = "detector") -> tuple[torch.nn.Module, float]:
    """A K+1-class detector trained on the view's labeled examples (OOD ones as class K), with
    `loss_fn(logits, targets)` (default cross-entropy) for `config.iterations` steps of
    `config.batch_size`; initial weights and batches from `seed`. Returns (model in eval mode, the
    mean loss of the last 10% of the steps)."""
    view.require("model", "images", "labeled", "labeled_labels", by="the detector")
    k = view.probs.shape[1]
    labels = view.labeled_labels.clone()
    labels[labels < 0] = k
    images = view.images
    init_seed, train_seed = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(seed)).tolist()
    model = model_like(view.model, k + 1, images.images.shape[1], images.images.device, init_seed, images)
    loss = train_model(model, images, view.labeled.cpu(), labels.cpu(), config, train_seed, desc=desc,
                       show_progress=False, loss_fn=loss_fn)
    model.eval()
    return model, loss
