"""RANDOM: a uniform draw of `budget` candidates."""
from __future__ import annotations

import torch

from mqnet_fast.strategies.base import Selection, Strategy, register


@register
class Random(Strategy):
    name = "random"
    sharded = True

    def select(self, view, budget):
        candidates = view.pool[0]  # every rank's candidates: a shard draws over all
        positions = torch.randperm(len(candidates), generator=view.generator)[:budget]
        return Selection(candidates[positions])
