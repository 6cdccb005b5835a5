"""CCAL (Du et al., "Contrastive Coding for Active Learning under Class Distribution Mismatch",
ICCV 2021).

Two contrastive encoders, each trained once per pool and cached (mqnet_fast.training.contrastive):
a semantic one with SimCLR (EncoderConfig.shifts = 1) and a distinctive one with CSI (the encoder
MQ-Net's CSI purity uses; shifted instances, 4 rotations). Features are the projection head's
outputs, unaugmented, compared by cosine.

- Semantic score: s(x) = the largest similarity of x to a labeled IN example in the semantic
  encoder (ops.nearest), whose class is x's pseudo-class l(x); S = s min-max scaled over the
  candidates; sem(x) = tanh(k (S - t) / 2) = (1 - e^-k(S-t)) / (1 + e^-k(S-t)), k = `ccal_k` (100),
  t = `ccal_t` (0.9): close to a step at S = t.
- Distinctive score, per IN class c, in the distinctive encoder, for each rotation r: the two most
  similar labeled examples of class c, A and B at similarities c1 >= c2, give
  (c1 - c2) + cos(A, B) + c1; d_c(x) is its mean over the rotations, D_c its min-max scaling over
  the candidates.
- score_c(x) = sem(x) + (1 - D_c(x)) for the candidates with pseudo-class c: semantically close to
  the labeled IN examples, but not redundant with those of its class.
Query: each class c takes its quota (b / K, the first b mod K classes one more) of its candidates by
score_c, highest first (ties to the lower row); a class with too few candidates leaves the rest of
its quota to the highest scores among the candidates not taken. With no labeled IN example yet there
is nothing to score against, and the query is the lowest rows.

From the published code (RUC-DWBI-ML/CCAL, evals/eval.py), as the text leaves them open: k, t, the
scores' min-max scaling, the distinctive formula. Differences: the published code averages each
candidate's features over 10 augmented copies per rotation, here it embeds each once, unaugmented
(as the CSI purity does); it takes the top `target` per class with no quota or budget check (a
class with too few candidates repeats other classes' picks), here quotas sum to b and picks are
distinct; a class with a single labeled example has A = B (c2 = c1, cos(A, B) = 1). MQ-Net's copy
(kaist-dmlab/MQNet) retrains both encoders every round and drops the pseudo-class mask.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast import ops
from mqnet_fast.strategies.base import Selection, Strategy, class_quota_query, min_max, register


@dataclass(frozen=True)
class CCALOptions:
    ccal_k: float = field(default=100.0, metadata={"help": "CCAL's semantic score steepness k"})
    ccal_t: float = field(default=0.9, metadata={"help": "CCAL's semantic score threshold t"})

    def __post_init__(self):
        for name in ("ccal_k", "ccal_t"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.ccal_k <= 0:
            raise ValueError(f"ccal_k must be > 0, got {self.ccal_k!r}")


def semantic_scores(candidates: torch.Tensor, labeled_in: torch.Tensor, labels: torch.Tensor, k: float,
                    t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sem (U,), pseudo-class (U,)): the steep sigmoid of the min-max scaled largest cosine to a
    labeled IN example, and that example's class."""
    values, nearest = ops.nearest(candidates, labeled_in)
    scaled = min_max(values.double())
    return torch.tanh(k * (scaled - t) / 2), labels.to(nearest.device)[nearest]


def distinctive_scores(candidates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(U,) d_c: for each rotation the top two cosines c1 >= c2 of a candidate to the class's labeled
    `references` (n, R, d), with A and B those examples, (c1 - c2) + cos(A, B) + c1; the mean over
    the R rotations. candidates: (U, R, d)."""
    cand = F.normalize(candidates.double(), dim=2)
    refs = F.normalize(references.double(), dim=2)
    u, rotations = cand.shape[0], cand.shape[1]
    total = torch.zeros(u, dtype=torch.float64, device=cand.device)
    for r in range(rotations if u else 0):
        keys = refs[:, r]
        values, top = ops.nearest_k(cand[:, r], keys, min(2, keys.shape[0]), metric="dot")  # ties to the lower
        c1 = values[:, 0]
        if keys.shape[0] == 1:
            c2, ab = c1, torch.ones_like(c1)
        else:
            c2, ab = values[:, 1], (keys @ keys.T)[top[:, 0], top[:, 1]]  # cos(A, B) of the two examples
        total += (c1 - c2) + ab + c1
    return total / rotations


@register
class CCAL(Strategy):
    trains_extra_models = True  # two contrastive encoders
    name = "ccal"
    Options = CCALOptions
    inputs = None  # two contrastive encoders of the pool's images
    needs_images = True

    def select(self, view, budget):
        from mqnet_fast.scores.csi import encoded_pool, encoder_config, split_pool_table
        from mqnet_fast.training.contrastive import embed, embed_rotations

        view.require("cache", "images", "labeled", "labeled_labels", by="ccal")
        csi_config = encoder_config(view)
        simclr_config = dataclasses.replace(csi_config, shifts=1)
        semantic_table = encoded_pool(view, ("ccal-semantic", "projection"),
                                       lambda enc, images, pool: embed(enc, images, pool, layer="projection"),
                                       simclr_config)
        rotation_table = encoded_pool(view, ("csi-pool-rotation-embeddings", "projection"),
                                       lambda enc, images, pool: embed_rotations(enc, images, pool, layer="projection"),
                                       csi_config)
        sem_cand, sem_in, _ = split_pool_table(view, semantic_table, by="ccal")
        rot_cand, rot_in, _ = split_pool_table(view, rotation_table.embeddings, by="ccal")
        num_classes = view.probs.shape[1]
        labels = view.labeled_labels[view.labeled_is_in.bool()].to(sem_in.device)
        if labels.numel() == 0:  # no labeled IN example yet: no score to rank by, the lowest rows
            positions = np.arange(budget)
            return Selection(view.candidates[torch.from_numpy(positions)], None, {"ccal_labeled_in": 0})
        sem, pseudo = semantic_scores(sem_cand, sem_in, labels, self.options.ccal_k, self.options.ccal_t)
        own = torch.zeros(len(sem), dtype=torch.float64, device=sem.device)
        for c in range(num_classes):
            mine = pseudo == c
            if bool(mine.any()):
                d = min_max(distinctive_scores(rot_cand, rot_in[labels == c]))
                own[mine] = (1 - d)[mine]
        scores = sem + own
        positions = class_quota_query(scores, pseudo, num_classes, budget)
        # no Selection.scores: the per-class quotas make a higher score no promise of a pick
        return Selection(view.candidates[torch.from_numpy(positions)], None, {"ccal_labeled_in": int(labels.numel())},
                         {"ccal_score": scores.float().cpu(), "ccal_semantic": sem.float().cpu(),
                          "ccal_pseudo_class": pseudo.float().cpu()})
