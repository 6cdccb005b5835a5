"""CONF: the least confident candidates, 1 - max softmax (Wang & Shang, IJCNN 2014)."""
from __future__ import annotations

from mqnet_fast.scores import least_confidence
from mqnet_fast.strategies.base import TopScore, register


@register
class Conf(TopScore):
    name = "conf"
    inputs = ("probs",)

    def score(self, view):
        return least_confidence(view.probs)
