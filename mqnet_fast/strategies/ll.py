"""LL: the candidates with the largest predicted loss (Yoo & Kweon, "Learning Loss for Active
Learning", CVPR 2019).

The target model is trained with the loss-prediction module (`uses_loss_module`: the loop builds it
with make_model(..., loss_module=True) and trains it as the paper does, mqnet_fast.training.target);
the query is the top `budget` candidates by the module's output, `extras["predicted_loss"]` of the
view. Differences from the published code (Mephisto405/Learning-Loss-for-Active-Learning): it scores
a random subset of 10,000 unlabeled examples per cycle, this one every candidate (as kaist-dmlab/MQNet
does with its default subset of 50,000, the whole pool); it keeps training the same backbone and
module from cycle to cycle, this loop (like MQNet's) starts each round from fresh weights.
"""
from __future__ import annotations

from mqnet_fast.scores.ll import predicted_loss
from mqnet_fast.strategies.base import TopScore, register


@register
class LearningLoss(TopScore):
    name = "ll"
    inputs = ("informativeness",)

    @property
    def uses_loss_module(self) -> bool:
        return True

    def score(self, view):
        return predicted_loss(view)  # on arrays (mqnet_fast.select): the informativeness column
