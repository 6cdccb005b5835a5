"""LfOSA (Ning et al., "Active Learning for Open-set Annotation", CVPR 2022).

A detector with one more class than the target model (mqnet_fast.training.detector: the target's
architecture and training recipe, from fresh weights every round) is trained on the labeled
examples, IN ones with their class and OOD ones as class K, with the cross-entropy of its logits
divided by a temperature T < 1 (`lfosa_temperature`, 0.5 as the published code's README runs it):
a lower temperature sharpens the separation of known and unknown. For every candidate, the maximum
activation value MAV = max_c g_c(x) (the largest logit, before softmax and temperature) and the
predicted class c = argmax_c g_c(x). For each known class c, a two-component Gaussian mixture is
fitted to the MAVs of the candidates predicted as c; a candidate's score w is its posterior of the
component with the larger mean (the known one). Candidates predicted as the unknown class score 0.
The query is the top `budget` candidates by w over all classes (ties to the lower row).

From the published code (ningkp/LfOSA, Sampling.AV_sampling_temperature), as the paper leaves them
open: the mixture's settings (mqnet_fast.mixture), here seeded from the round's generator, where the
published code leaves it unseeded; a class with fewer than 2 predicted candidates (or 2 distinct
MAVs) has no mixture and its candidates score 0, as the published code leaves them out. Differences: the published code uses one temperature
for known and another for unknown examples (`known_T`, `unknown_T`; its README sets both to 0.5, the
one temperature here); its ResNet-18 has a 2-unit bottleneck before the logits (a center-loss
leftover), this detector is the target model's architecture; it scores augmented images, this one
the unaugmented ones; and it leaves queried OOD examples in the pool, where the loop here never
offers a labeled example again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mqnet_fast.mixture import two_component_posteriors
from mqnet_fast.strategies.base import Strategy, register, top_selection

@dataclass(frozen=True)
class LfOSAOptions:
    lfosa_temperature: float = field(default=0.5, metadata={"help": "LfOSA's detector temperature T (> 0)"})

    def __post_init__(self):
        t = self.lfosa_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise ValueError(f"lfosa_temperature must be a finite number > 0, got {t!r}")


def known_posterior(values: np.ndarray, seed: int) -> np.ndarray:
    """The posterior of the larger-mean component of a 2-component Gaussian mixture fitted to the
    1-D `values` (fewer than 2 distinct values: zeros)."""
    return two_component_posteriors(values, seed)[1]


def lfosa_scores(logits: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, MAV, predicted class) of the candidates from the detector's (U, K + 1) logits: w the
    known-component posterior of the candidate's MAV among those predicted as its class, 0 where the
    prediction is the unknown class K."""
    logits = logits.double().cpu()
    mav, predicted = logits.max(1)
    w = np.zeros(len(mav))
    k = logits.shape[1] - 1
    for c in range(k):
        rows = np.flatnonzero(predicted.numpy() == c)
        if len(rows):
            w[rows] = known_posterior(mav.numpy()[rows], seed + c)
    return torch.from_numpy(w), mav, predicted


@register
class LfOSA(Strategy):
    trains_extra_models = True  # its detector
    name = "lfosa"
    Options = LfOSAOptions
    inputs = None  # trains a detector on the labeled images

    def select(self, view, budget):
        from mqnet_fast.training.detector import train_detector
        from mqnet_fast.training.inference import infer

        view.require("train_config", by="lfosa")
        t = self.options.lfosa_temperature
        seed = int(torch.randint(0, 2**62, (1,), generator=view.generator))
        detector, loss = train_detector(view, view.train_config, seed,
                                        lambda logits, targets: torch.nn.functional.cross_entropy(logits / t, targets),
                                        desc="lfosa detector")
        logits = infer(detector, view.images, view.candidates).logits
        w, mav, predicted = lfosa_scores(logits, seed)
        selection = top_selection(view, w.float(), budget)
        unknown = predicted == logits.shape[1] - 1
        selection.columns = {"lfosa_mav": mav.float(), "lfosa_predicted_unknown": unknown.float()}
        selection.extra = {"lfosa_detector_loss": loss, "lfosa_predicted_unknown": int(unknown.sum())}
        return selection
