"""ReAct purity (Sun et al., "ReAct: Out-of-distribution Detection With Rectified Activations",
NeurIPS 2021): the energy score of the target model's classifier head over penultimate activations
clipped at a high percentile of in-distribution activations. The MQ-Net paper compares it with CSI
as a purity score (its Table 9)."""
from __future__ import annotations

import torch

from mqnet_fast.scores import register_purity

PERCENTILE = 90.0


def react_threshold(labeled_in_feats: torch.Tensor, percentile: float = PERCENTILE) -> torch.Tensor:
    """The clipping threshold c: the `percentile`-th percentile of every activation (all units
    together, as ReAct computes it on its ID data) of the labeled IN examples' penultimate features."""
    values = labeled_in_feats.detach().float().flatten()
    return torch.quantile(values.cpu().double(), percentile / 100.0).to(values)


def react_energy(feats: torch.Tensor, head: torch.nn.Linear, threshold: torch.Tensor | float) -> torch.Tensor:
    """logsumexp over the classes of head(min(feats, threshold)) (the negative free energy at
    temperature 1; larger = more in-distribution), (n,) float32."""
    weight, bias = head.weight.detach().float(), head.bias.detach().float()
    clipped = torch.clamp(feats.float(), max=threshold)
    return torch.logsumexp(clipped @ weight.to(feats.device).t() + bias.to(feats.device), dim=1)


@register_purity("react")
def _react(view) -> torch.Tensor:
    view.require("model", by="purity 'react'")
    if not bool(view.labeled_is_in.any()):
        return torch.zeros(view.feats.shape[0], dtype=torch.float32, device=view.feats.device)
    return react_energy(view.feats, view.model.linear, react_threshold(view.labeled_in_feats))
