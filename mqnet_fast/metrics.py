"""Evaluation metrics over per-example scores."""
from __future__ import annotations

import numpy as np


def auroc(scores, positive) -> float:
    """Area under the ROC curve of `scores` for telling `positive` (bool) rows from the others: the
    probability that a random positive scores above a random negative, ties counting 1/2
    (Mann-Whitney U over average ranks). nan when either class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy comes with scikit-learn

    ranks = rankdata(scores)  # 1-based, ties get their average rank
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u / (num_pos * num_neg))
