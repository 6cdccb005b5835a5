"""MARGIN: the candidates of smallest top-1 minus top-2 softmax margin (Wang & Shang, IJCNN 2014)."""
from __future__ import annotations

from mqnet_fast.scores import negative_margin
from mqnet_fast.strategies.base import TopScore, register


@register
class Margin(TopScore):
    name = "margin"
    inputs = ("probs",)

    def score(self, view):
        return negative_margin(view.probs)
