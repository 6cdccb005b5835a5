"""Purity by nearest labeled IN neighbour in the target model's own penultimate features."""
from __future__ import annotations

import torch

from mqnet_fast import ops
from mqnet_fast.scores import register_purity


def knn_purity(embeddings: torch.Tensor, labeled_in_embeddings: torch.Tensor) -> torch.Tensor:
    """Max cosine similarity of each row of `embeddings` (n, d) to the labeled IN examples'
    embeddings (m, d), through the nearest-set op. With no labeled IN example every purity is 0
    (and with no row, e.g. a torchrun rank without candidates, the result is empty)."""
    if labeled_in_embeddings.shape[0] == 0 or embeddings.shape[0] == 0:
        return torch.zeros(embeddings.shape[0], dtype=torch.float32, device=embeddings.device)
    values, _ = ops.nearest(embeddings, labeled_in_embeddings, metric="cosine")
    return values.float()


@register_purity("knn", inputs=("feats", "labeled_feats", "labeled_is_in"))
def _knn(view) -> torch.Tensor:
    return knn_purity(view.feats, view.labeled_in_feats)
