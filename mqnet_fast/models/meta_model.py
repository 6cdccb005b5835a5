"""MQ-Net's meta-model Phi: a non-negative MLP over the meta-inputs z = <P(x), I(x)>."""
from __future__ import annotations

import math

import torch
from torch import nn

from mqnet_fast import ops
from mqnet_fast.reference.nonneg_mlp_rank_train import straight_through_scores


INITS = ("uniform", "scaled")


class MetaModel(nn.Module):
    """Phi: inputs (N, k) -> hidden (sigmoid) -> one score, weights used as relu(W), so that
    z_i >= z_j componentwise implies Phi(z_i) >= Phi(z_j) (the skyline constraint) by construction.
    Weights start non-negative and the training op keeps them so (projected SGD: W = max(W, 0)
    after every step). `init`: "uniform" draws every weight and bias from U(0, 1), as the published
    code's QueryNet does; "scaled" draws weights from U(0, 1/sqrt(fan_in)) and biases from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear's scale, made non-negative)."""

    def __init__(self, in_features: int = 2, hidden: int = 64, seed: int = 0, init: str = "scaled"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer in (self.hidden, self.out):
                bound = 1.0 if init == "uniform" else 1.0 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * bound)
                low = 0.0 if init == "uniform" else -bound
                layer.bias.copy_(low + torch.rand(layer.bias.shape, generator=generator) * (bound - low))

    @property
    def weights(self) -> list[torch.Tensor]:
        return [self.hidden.weight, self.out.weight]

    @property
    def biases(self) -> list[torch.Tensor]:
        return [self.hidden.bias, self.out.bias]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable scores (N,) of standardized meta-inputs z (N, k); the values are those of
        mqnet_fast.reference.nonneg_mlp_score (and of the fused op).

        The weights enter as relu(W) with a straight-through gradient: d relu(W)/dW is taken as 1,
        not 0, where W <= 0. With the plain relu gradient a weight that reaches 0 gets no gradient
        again and stays dead; on a small, noisy query set most output weights die within a few
        hundred steps and Phi becomes a constant (ranking loss stuck at the margin). The training op
        projects W back to >= 0 after every step, so a weight waits at 0 instead of drifting below
        it, and the next gradient that points up lifts it."""
        return straight_through_scores(z, self.weights, self.biases)

    def positive_fraction(self) -> float:
        """The fraction of Phi's weights (both layers) that are > 0, i.e. in use."""
        flat = torch.cat([w.detach().reshape(-1) for w in self.weights])
        return float((flat > 0).float().mean())

    @torch.no_grad()
    def score(self, z: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
        """Scores (N,) of a whole pool through the fused op, standardizing z with (mean, std) in it."""
        params = [p.to(z.device) for p in self.weights], [p.to(z.device) for p in self.biases]
        return ops.nonneg_mlp_score(z, *params, mean=mean, std=std, backend=backend)
