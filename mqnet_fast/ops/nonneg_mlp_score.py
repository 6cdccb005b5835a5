"""nonneg_mlp_score: MQ-Net's meta-model Phi (a non-negative MLP) on a whole pool, fused."""
from __future__ import annotations

from typing import Sequence

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import _triton, reference
from mqnet_fast._library import has_compiled
from mqnet_fast.ops._backends import Backends, resolve


def _triton_shape(layers: int) -> str | None:
    if layers != 2:  # "auto" then runs the reference
        return (f"nonneg_mlp_score: backend 'triton' takes one hidden layer (2 weight matrices, MQ-Net's shape), "
                f"got {layers}; use backend='torch'")
    return None


# The Triton kernel computes in float32 and takes MQ-Net's shape only (one hidden layer).
TABLE = Backends("nonneg_mlp_score", float32=("triton",), shapes={"triton": _triton_shape})


def nonneg_mlp_score(z: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], *,
                     mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """MQ-Net's meta-model Phi on a whole pool: a non-negative MLP, fused.

    Args:
        z: (N, k) meta-inputs (k = 2 for MQ-Net: purity, informativeness).
        weights: a list or tuple of tensors, per layer (out, in), as torch.nn.Linear stores them; used
            as relu(W) (the skyline parametrization: every score is non-decreasing in every input). The
            last layer has out = 1.
        biases: a list or tuple of tensors, per layer (out,).
        mean, std: optional (k,) per-column standardization, applied as (z - mean) / std; std > 0.

    Math: h_0 = (z - mean) / std; h_l = sigmoid(relu(W_l) h_{l-1} + b_l) for hidden layers; the score
    is relu(W_L) h_{L-1} + b_L. Agrees with mqnet_fast.reference.nonneg_mlp_score to float tolerance.

    Returns: (N,) scores in z's compute dtype.

    Example:
        >>> phi = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Sigmoid(), torch.nn.Linear(64, 1))
        >>> w = [phi[0].weight, phi[2].weight]; b = [phi[0].bias, phi[2].bias]
        >>> nonneg_mlp_score(torch.rand(1000, 2), w, b).shape
        torch.Size([1000])
    """
    checks.tensors(z=z)
    weights, biases = checks.tensor_list("weights", weights), checks.tensor_list("biases", biases)
    checks.tensors(optional=True, mean=mean, std=std)
    device = checks.same_device(z=z, mean=mean, std=std, **{f"weights[{i}]": w for i, w in enumerate(weights)},
                                **{f"biases[{i}]": b for i, b in enumerate(biases)})
    z = checks.matrix("z", z, check_values=False)
    dtype = checks.compute_dtype(z)
    resolve(TABLE, backend, device, dtype)  # a backend that cannot run here is refused before the layer checks
    if not weights:
        raise ValueError("weights must hold at least one layer")
    if len(weights) != len(biases):
        raise ValueError(f"weights and biases must have the same length, got {len(weights)} and {len(biases)}")
    width = z.shape[1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        checks.matrix(f"weights[{i}]", w, cols=width, check_values=False)
        if b.dim() != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"biases[{i}] must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        width = w.shape[0]
    if width != 1:
        raise ValueError(f"the last layer must have one output, got weights[-1] of shape {tuple(weights[-1].shape)}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    if mean is not None:
        for name, t in (("mean", mean), ("std", std)):
            if t.shape != (z.shape[1],):
                raise ValueError(f"{name} must have shape ({z.shape[1]},), got {tuple(t.shape)}")
    chosen = resolve(TABLE, backend, device, dtype, layers=len(weights))
    if chosen != "triton":  # the Triton kernel checks the values as it reads them: no host sync per argument
        _check_mlp_values(z, weights, biases, mean, std)
    z = z.to(dtype)
    weights = [w.detach().to(dtype) for w in weights]
    biases = [b.detach().to(dtype) for b in biases]
    if mean is not None:
        mean, std = mean.to(dtype), std.to(dtype)
    if chosen == "triton":
        standardize = mean is not None
        if not standardize:
            mean = std = z  # not read
        module = _triton.kernel_module("nonneg_mlp_score")
        scores, flags = module.score(
            z.contiguous(), weights[0].contiguous(), biases[0].contiguous(), weights[1].contiguous(),
            biases[1].contiguous(), mean.contiguous(), std.contiguous(), standardize)
        if flags:
            _check_mlp_values(z, weights, biases, mean if standardize else None, std if standardize else None)
            flagged = [name for bit, name in enumerate(module.FLAG_NAMES) if flags >> bit & 1]
            raise AssertionError(f"the Triton kernel flagged {flagged} as holding bad values, which the checks accept")
        return scores
    if chosen == "torch":
        with torch.no_grad():
            return reference.nonneg_mlp_score(z, weights, biases, mean, std)
    return torch.ops.mqnet_fast.nonneg_mlp_score(z, weights, biases, mean, std)


def _check_mlp_values(z, weights, biases, mean, std) -> None:
    """nonneg_mlp_score's value checks: every input finite, std > 0 (each costs a host sync on a GPU)."""
    checks.finite("z", z)
    for i, (w, b) in enumerate(zip(weights, biases)):
        checks.finite(f"weights[{i}]", w)
        checks.finite(f"biases[{i}]", b)
    if mean is not None:
        checks.finite("mean", mean)
        checks.finite("std", std)
        if bool((std <= 0).any()):
            raise ValueError(f"std must be > 0, got {std.tolist()}")


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::nonneg_mlp_score")
    def _(z, weights, biases, mean, std):
        return z.new_empty((z.shape[0],))


if has_compiled():
    _register_fake()
