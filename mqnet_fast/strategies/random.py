"""RANDOM: a uniform draw of `budget` candidates."""
from __future__ import annotations

import torch

from mqnet_fast.strategies.base import Selection, Strategy, register


@register
class Random(Strategy):
    name = "random"

    def select(self, view, budget):
        positions = torch.randperm(len(view.candidates), generator=view.generator)[:budget]
        return Selection(view.candidates[positions])
