from __future__ import annotations

import torch
import torch.nn.functional as F


def nonneg_mlp_score(z, weights, biases, mean=None, std=None) -> torch.Tensor:
    """MQ-Net's Phi, the definition: h = (z - mean) / std, then for each layer h = relu(W) h + b with a
    sigmoid after every layer but the last (which has one output). z: (N, k); weights[i]: (out, in) as
    torch.nn.Linear stores them. Returns (N,). Differentiable in every argument."""
    h = z if mean is None else (z - mean) / std
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w.clamp_min(0), b)
        if i < len(weights) - 1:
            h = torch.sigmoid(h)
    return h.squeeze(1)
