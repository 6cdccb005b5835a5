"""BADGE (Ash et al., ICLR 2020): k-means++ seeding over the implicit gradient embeddings of the last
layer, built from the softmax and the penultimate features (the BADGE op, never materialized; on a
sharded view across the ranks)."""
from __future__ import annotations

import torch

from mqnet_fast import ops
from mqnet_fast.strategies.base import Selection, Strategy, register


@register
class Badge(Strategy):
    name = "badge"
    inputs = ("probs", "feats")
    sharded = True

    def select(self, view, budget):
        dtype = torch.promote_types(view.probs.dtype, view.feats.dtype)  # float64 stays float64
        probs, feats = view.on_group_device(view.probs.to(dtype)), view.on_group_device(view.feats.to(dtype))
        positions = ops.badge_kmeanspp(probs, feats, budget, generator=view.generator, group=view.group).cpu()
        return Selection(view.pool[0][positions])
