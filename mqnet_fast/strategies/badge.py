"""BADGE (Ash et al., ICLR 2020): k-means++ seeding over the implicit gradient embeddings of the last
layer, built from the softmax and the penultimate features (the BADGE op, never materialized; on a
sharded view distributed.badge_kmeanspp)."""
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
        if view.shard is None:
            positions = ops.badge_kmeanspp(view.probs.to(dtype), view.feats.to(dtype), budget,
                                           generator=view.generator).cpu()
            return Selection(view.candidates[positions])
        from mqnet_fast import distributed

        world = view.shard.world
        positions = distributed.badge_kmeanspp(view.probs.to(world.device, dtype), view.feats.to(world.device, dtype),
                                               budget, generator=view.generator, group=world.group).cpu()
        return Selection(view.shard.candidates[positions])
