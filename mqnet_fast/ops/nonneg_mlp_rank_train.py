"""nonneg_mlp_rank_train: MQ-Net's Phi trained with SGD on a pairwise margin ranking loss, every
step of the eager loop in one call."""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import reference
from mqnet_fast._library import has_compiled
from mqnet_fast.ops._backends import Backends, check_name, resolve

# The compiled loop and the reference only; "auto" takes the compiled loop whenever it is built, CUDA
# tensors included (copied to the CPU and back: S small sequential steps would be launch-bound).
TABLE = Backends("nonneg_mlp_rank_train", kernels=("torch", "cpp"), auto={"cpu": ("cpp", "torch")},
                 missing={b: f"nonneg_mlp_rank_train: there is no {b!r} kernel (the loop is sequential and tiny); use 'auto', 'cpp' or 'torch'" for b in ("triton", "cuda")})


class RankTrainResult(NamedTuple):
    weights: list[torch.Tensor]  #: [W1 (H, k), W2 (1, H)], trained (every entry >= 0)
    biases: list[torch.Tensor]   #: [b1 (H,), b2 (1,)], trained
    losses: torch.Tensor         #: (S,) each step's loss, before that step's update


def nonneg_mlp_rank_train(z: torch.Tensor, targets: torch.Tensor, batches: torch.Tensor, lr: torch.Tensor,
                          weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], *,
                          momentum: float = 0.9, weight_decay: float = 5e-4, margin: float = 0.1,
                          backend: str = "auto") -> RankTrainResult:
    """Trains a non-negative MLP k -> H -> 1 (MQ-Net's Phi) with SGD on a pairwise margin ranking
    loss: every step of the eager loop (autograd + torch.optim.SGD) in one call.

    Args:
        z: (n, k) float inputs (float32; float64 is computed in float64, half precision in float32).
        targets: (n,) float, what the scores should rank (ties allowed: equal targets are not ordered).
        batches: (S, B) int64 row indices into z, one row per step: that step's mini-batch.
        lr: (S,) float, non-negative: the learning rate of each step.
        weights: [W1 (H, k), W2 (1, H)] as torch.nn.Linear stores them; used as relu(W).
        biases: [b1 (H,), b2 (1,)].
        momentum, weight_decay: torch.optim.SGD's (no dampening, not Nesterov), both >= 0.
        margin: the ranking margin (any finite float).

    Math, per step on the rows r of batches[step] (x_r = z[r], t_r = targets[r]):
    s_r = relu(W2) sigmoid(relu(W1) x_r + b1) + b2; the batch is split in halves and row i paired with
    row i + B // 2 (an odd last row is unpaired); loss = sum_i max(0, margin - sign(t_i - t_j)(s_i - s_j))
    [t_i != t_j] / max(1, #{i: t_i != t_j}). The gradient is autograd's, with relu(W) straight-through
    (dW = d relu(W)) and no gradient where a hinge is exactly at 0 (as torch's clamp). Then SGD:
    g = grad + weight_decay W; buf = g on the first step, else momentum buf + g; W -= lr[step] buf,
    for every parameter (momentum buffers start empty), and then the weights, not the biases, are
    projected onto W >= 0: W = max(W, 0) (projected SGD). A weight SGD pushes below 0 waits at 0,
    where relu(W) = W, and the straight-through gradient can lift it again; weights given with
    negative entries are used as relu(W) in the first step and are >= 0 after it.

    Backends: "cpp" (the compiled loop, CPU tensors), "torch" (mqnet_fast.reference.nonneg_mlp_rank_train,
    the eager loop, any device). "auto" takes the compiled loop whenever it is built, also for CUDA
    tensors: they are copied to the CPU and the results copied back, since S small sequential steps
    would be launch-bound on a GPU (not timed there). The inputs are never modified.

    Returns: RankTrainResult(weights [W1, W2], biases [b1, b2], losses (S,)), new tensors on z's device
    in the compute dtype. Agrees with the reference to float tolerance (tests/test_nonneg_mlp_rank_train.py).

    Example:
        >>> z = torch.randn(500, 2); t = torch.rand(500)
        >>> batches = torch.argsort(torch.rand(100, 500), dim=1)[:, :64]
        >>> w = [torch.rand(64, 2), torch.rand(1, 64) / 8]; b = [torch.zeros(64), torch.zeros(1)]
        >>> res = nonneg_mlp_rank_train(z, t, batches, torch.full((100,), 0.01), w, b)
        >>> res.weights[0].shape, res.losses.shape
        (torch.Size([64, 2]), torch.Size([100]))
    """
    op = "nonneg_mlp_rank_train"
    checks.tensors(z=z, targets=targets, batches=batches, lr=lr)
    weights, biases = checks.tensor_list("weights", weights), checks.tensor_list("biases", biases)
    device = checks.same_device(z=z, targets=targets, batches=batches, lr=lr,
                                **{f"weights[{i}]": w for i, w in enumerate(weights)},
                                **{f"biases[{i}]": b for i, b in enumerate(biases)})
    check_name(TABLE, backend)  # an unknown or missing backend refused before the checks
    z = checks.matrix("z", z)
    n, k = z.shape
    for name, t, size in (("targets", targets, n), ("lr", lr, None)):
        if t.dim() != 1 or (size is not None and t.shape[0] != size):
            raise ValueError(f"{name} must have shape ({size if size is not None else 'S'},), got {tuple(t.shape)}")
        if t.dtype not in checks.FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        checks.finite(name, t)
    if batches.dim() != 2:
        raise ValueError(f"batches must be a 2-D tensor (steps, batch) of row indices, got shape {tuple(batches.shape)}")
    batches = checks.indices("batches", batches.reshape(-1), n, device).view(batches.shape)
    if lr.shape[0] != batches.shape[0]:
        raise ValueError(f"lr must have shape ({batches.shape[0]},), one rate per row of batches, got {tuple(lr.shape)}")
    if bool((lr < 0).any()):
        raise ValueError(f"lr must be >= 0, got a minimum of {lr.min().item()}")
    if len(weights) != 2 or len(biases) != 2:
        raise ValueError(f"{op} trains one hidden layer (k -> H -> 1): weights and biases must hold 2 entries "
                         f"each, got {len(weights)} and {len(biases)}")
    checks.matrix("weights[0]", weights[0], cols=k)
    hidden = weights[0].shape[0]
    checks.matrix("weights[1]", weights[1], rows=1, cols=hidden)
    for i, (b, size) in enumerate(zip(biases, (hidden, 1))):
        if b.shape != (size,):
            raise ValueError(f"biases[{i}] must have shape ({size},), got {tuple(b.shape)}")
        checks.finite(f"biases[{i}]", b)
    for name, value, low in (("momentum", momentum, 0.0), ("weight_decay", weight_decay, 0.0),
                             ("margin", margin, -math.inf)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite float, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    # "auto" is resolved for the CPU: the compiled loop runs there whatever the tensors' device
    chosen = resolve(TABLE, backend, torch.device("cpu") if backend == "auto" else device)
    run_on = torch.device("cpu") if chosen == "cpp" and backend == "auto" else device
    dtype = checks.compute_dtype(z)
    z, targets, lr = (t.to(device=run_on, dtype=dtype) for t in (z, targets, lr))
    batches = batches.to(run_on)
    weights = [w.detach().to(device=run_on, dtype=dtype) for w in weights]
    biases = [b.detach().to(device=run_on, dtype=dtype) for b in biases]
    if chosen == "torch":
        w, b, losses = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, momentum,
                                                       weight_decay, margin)
        return RankTrainResult(w, b, losses)
    w1, b1, w2, b2, losses = torch.ops.mqnet_fast.nonneg_mlp_rank_train(
        z, targets, batches, lr, weights[0], biases[0], weights[1], biases[1], float(momentum),
        float(weight_decay), float(margin))
    return RankTrainResult([w1.to(device), w2.to(device)], [b1.to(device), b2.to(device)], losses.to(device))


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::nonneg_mlp_rank_train")
    def _(z, targets, batches, lr, w1, b1, w2, b2, momentum, weight_decay, margin):
        return (z.new_empty(w1.shape), z.new_empty(b1.shape), z.new_empty(w2.shape), z.new_empty(b2.shape),
                z.new_empty((batches.shape[0],)))


if has_compiled():
    _register_fake()
