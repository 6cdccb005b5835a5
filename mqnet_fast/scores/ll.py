"""Informativeness from learning loss (Yoo & Kweon, "Learning Loss for Active Learning", CVPR 2019):
the loss the target model's loss-prediction module predicts for each candidate."""
from __future__ import annotations

import torch

from mqnet_fast.scores import register_informativeness


@register_informativeness("ll")
def predicted_loss(view) -> torch.Tensor:
    """The view's `extras["predicted_loss"]` (U,): filled in by the loop when the target model was
    trained with the loss-prediction module (a strategy whose `uses_loss_module` is True)."""
    loss = view.extras.get("predicted_loss")
    if loss is None:
        raise ValueError("informativeness 'll' needs extras['predicted_loss'] in the RoundView, which was not "
                         "given: the target model must be trained with the loss-prediction module "
                         "(make_model(..., loss_module=True); in the loop, a strategy whose uses_loss_module is True)")
    if loss.shape != (view.candidates.shape[0],):
        raise ValueError(f"extras['predicted_loss'] has shape {tuple(loss.shape)}, expected "
                         f"({view.candidates.shape[0]},), one per candidate")
    return loss
