"""The eager definition of nonneg_mlp_rank_train: MQ-Net's meta-model training loop, one autograd and
torch.optim.SGD step per mini-batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def straight_through_scores(z, weights, biases) -> torch.Tensor:
    """The non-negative MLP with relu(W) in the forward pass and a straight-through gradient
    (d relu(W) / dW taken as 1): relu(W).detach() + (W - W.detach()) has relu(W)'s value and W's gradient."""
    h = z
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w.clamp_min(0).detach() + (w - w.detach()), b)
        if i < len(weights) - 1:
            h = torch.sigmoid(h)
    return h.squeeze(1)


def ranking_loss(scores, targets, margin: float = 0.1) -> torch.Tensor:
    """MQ-Net's ranking loss (Eq. 10 of the paper) on one mini-batch, already shuffled: the batch split
    in halves, example i paired with i + half (an odd last one unpaired); a pair
    costs max(0, margin - sign(t_i - t_j) (s_i - s_j)), pairs with equal targets nothing; the sum is
    divided by max(1, the number of pairs with distinct targets). (The published code orders a tie one
    way; two OOD examples, both with loss 0, carry no order, so they are left out here.)"""
    half = scores.shape[0] // 2
    sign = torch.sign(targets[:half] - targets[half:2 * half])
    cost = torch.clamp(margin - sign * (scores[:half] - scores[half:2 * half]), min=0) * (sign != 0)
    return cost.sum() / (sign != 0).sum().clamp_min(1)


def nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, momentum: float = 0.9,
                          weight_decay: float = 5e-4, margin: float = 0.1):
    """The definition: the eager training loop, autograd and torch.optim.SGD(momentum, weight_decay),
    one step per row of batches, on the mini-batch z[batches[step]] with learning rate lr[step], each
    step followed by the projection of the weights (not the biases) onto W >= 0 (projected SGD).
    z: (n, k); targets: (n,); batches: (S, B) int64; lr: (S,); weights, biases: per layer, as
    torch.nn.Linear stores them (the last layer has one output). The inputs are not modified.
    Returns (weights, biases, losses (S,)): the trained parameters and each step's loss before its update."""
    with torch.enable_grad():
        weights = [w.detach().clone().requires_grad_(True) for w in weights]
        biases = [b.detach().clone().requires_grad_(True) for b in biases]
        optimizer = torch.optim.SGD(weights + biases, lr=0.0, momentum=momentum, weight_decay=weight_decay)
        losses = torch.empty(batches.shape[0], dtype=z.dtype, device=z.device)
        for step in range(batches.shape[0]):
            for group in optimizer.param_groups:
                group["lr"] = float(lr[step])
            rows = batches[step]
            loss = ranking_loss(straight_through_scores(z[rows], weights, biases), targets[rows], margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for w in weights:
                    w.clamp_(min=0)
            losses[step] = loss.detach()
    return [w.detach() for w in weights], [b.detach() for b in biases], losses
