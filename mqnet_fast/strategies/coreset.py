"""CORESET (Sener & Savarese, ICLR 2018): k-center greedy over the target model's penultimate
features, every labeled example an initial center (the k-center op; on a sharded view
distributed.kcenter_greedy, rank 0 holding the labeled rows before its candidates)."""
from __future__ import annotations

import torch

from mqnet_fast import ops
from mqnet_fast.strategies.base import Selection, Strategy, register


@register
class Coreset(Strategy):
    name = "coreset"
    inputs = ("feats", "labeled_feats")
    sharded = True

    def select(self, view, budget):
        num_labeled = view.labeled_feats.shape[0]
        shard = view.shard
        first = shard is None or shard.world.rank == 0  # the rows of the pool start with the labeled ones
        x = torch.cat([view.labeled_feats.to(view.feats), view.feats]) if first else view.feats  # float64 stays
        labeled = torch.arange(num_labeled, device=x.device)
        if shard is None:
            result = ops.kcenter_greedy(x, labeled, budget)
            candidates, start = view.candidates, 0
        else:
            from mqnet_fast import distributed

            result = distributed.kcenter_greedy(x.to(shard.world.device), labeled.to(shard.world.device), budget,
                                                group=shard.world.group)
            candidates, start = shard.candidates, shard.start
        positions = result.indices.cpu() - num_labeled
        # A picked row's score is what ranked it: its distance to the centers when it was picked (the
        # radius then); every other row's its final distance, which no radius before it was below.
        # So scores are "higher = preferred" and the picks come in descending score.
        scores = result.min_dist[num_labeled if first else 0:].float().cpu()
        mine = (positions >= start) & (positions < start + scores.shape[0])
        scores[positions[mine] - start] = result.radii.float().cpu()[mine]
        return Selection(candidates[positions], scores,
                         {"coreset_final_radius": float(result.radii[-1]) if budget else float("nan")})
