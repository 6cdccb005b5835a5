"""ENTROPY: the candidates of highest softmax entropy (Wang & Shang, IJCNN 2014)."""
from __future__ import annotations

from mqnet_fast.scores import entropy
from mqnet_fast.strategies.base import TopScore, register


@register
class Entropy(TopScore):
    name = "entropy"
    inputs = ("probs",)

    def score(self, view):
        return entropy(view.probs)
