"""CORESET (Sener & Savarese, ICLR 2018): k-center greedy over the target model's penultimate
features, every labeled example an initial center (the k-center op)."""
from __future__ import annotations

import torch

from mqnet_fast import ops
from mqnet_fast.strategies.base import Selection, Strategy, register


@register
class Coreset(Strategy):
    name = "coreset"
    inputs = ("feats", "labeled_feats")

    def select(self, view, budget):
        num_labeled = view.labeled_feats.shape[0]
        x = torch.cat([view.labeled_feats.to(view.feats), view.feats])  # float64 stays float64 (exact picks)
        labeled = torch.arange(num_labeled, device=x.device)
        result = ops.kcenter_greedy(x, labeled, budget)
        positions = result.indices.cpu() - num_labeled
        # A picked row's score is what ranked it: its distance to the centers when it was picked (the
        # radius then); every other row's its final distance, which no radius before it was below.
        # So scores are "higher = preferred" and the picks come in descending score.
        scores = result.min_dist[num_labeled:].float().cpu()
        scores[positions] = result.radii.float().cpu()
        return Selection(view.candidates[positions], scores,
                         {"coreset_final_radius": float(result.radii[-1]) if budget else float("nan")})
