"""CORESET (Sener & Savarese, ICLR 2018): k-center greedy over the target model's penultimate
features, the labeled examples the initial centers (the k-center op; on a sharded view across the
ranks, rank 0 holding the initial centers' rows before its candidates).

`coreset_centers` picks which labeled examples are initial centers: "all" (every labeled example,
OOD ones included, so a candidate next to a labeled OOD example counts as covered) or "in" (only
the labeled IN examples, `labeled_is_in`). The published MQ-Net code (kaist-dmlab/MQNet,
methods/coreset.py, the baseline the MQ-Net paper ran) seeds k-center with its labeled IN set only:
"in". The default is "all": the k-center problem of the CORESET paper covers the whole labeled
set, and it runs on arrays without IN/OOD flags; docs/strategies.md measures both on digits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mqnet_fast import ops
from mqnet_fast.strategies.base import Selection, Strategy, register

CENTERS = ("all", "in")


@dataclass(frozen=True)
class CoresetOptions:
    coreset_centers: str = field(default="all", metadata={
        "help": "CORESET's initial centers: all (every labeled example) or in (the labeled IN ones, as the "
                "MQ-Net code)"})

    def __post_init__(self):
        if self.coreset_centers not in CENTERS:
            raise ValueError(f"coreset_centers must be one of {', '.join(CENTERS)}, got {self.coreset_centers!r}")


@register
class Coreset(Strategy):
    name = "coreset"
    Options = CoresetOptions
    inputs = ("feats", "labeled_feats", "labeled_is_in")
    sharded = True

    def missing_inputs(self, given):
        needs = ["feats", "labeled_feats"] + (["labeled_is_in"] if self.options.coreset_centers == "in" else [])
        return [name for name in needs if name not in given]

    def select(self, view, budget):
        centers = view.labeled_feats
        if self.options.coreset_centers == "in":
            centers = view.labeled_in_feats
        num_centers = centers.shape[0]  # the same on every rank: each holds the whole labeled set
        shard = view.shard
        first = shard is None or shard.world.rank == 0  # the rows of the pool start with the centers
        x = torch.cat([centers.to(view.feats), view.feats]) if first else view.feats  # float64 stays
        labeled = torch.arange(num_centers, device=x.device)
        result = ops.kcenter_greedy(view.on_group_device(x), view.on_group_device(labeled), budget, group=view.group)
        candidates, start = view.pool
        positions = result.indices.cpu() - num_centers
        # A picked row's score is what ranked it: its distance to the centers when it was picked (the
        # radius then); every other row's its final distance, which no radius before it was below.
        # So scores are "higher = preferred" and the picks come in descending score.
        scores = result.min_dist[num_centers if first else 0:].float().cpu()
        mine = (positions >= start) & (positions < start + scores.shape[0])
        scores[positions[mine] - start] = result.radii.float().cpu()[mine]
        return Selection(candidates[positions], scores,
                         {"coreset_final_radius": float(result.radii[-1]) if budget else float("nan")})
