"""EOAL: FINCH on hand-placed points, the one-vs-rest and cluster losses by hand, the diverse
lowest-score query, and the strategy on separable embeddings."""
import math

import numpy as np
import pytest
import torch

from mqnet_fast.strategies import make_strategy
from mqnet_fast.finch import finch_clusters, finch_partitions, first_neighbours
from mqnet_fast.strategies.eoal import cluster_regularizer, diverse_lowest, open_set_loss
from test_lfosa import _view

# three tight groups at 0, 100 and 200 degrees
POINTS = torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, -0.05],
                       [-0.17, 0.98], [-0.12, 0.99],
                       [-0.94, -0.34], [-0.9, -0.4]])


def test_first_neighbours_and_finch_by_hand():
    assert first_neighbours(POINTS).tolist() == [1, 0, 0, 4, 3, 6, 5]
    partitions = finch_partitions(POINTS)
    assert partitions[0].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert partitions[-1].max() < partitions[0].max()  # coarser partitions follow
    assert finch_clusters(POINTS, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert finch_clusters(POINTS, 1).tolist() == [0] * 7
    # 2 clusters: the closest two means merge (100 and 200 degrees are 100 apart, 0 and 100 too, 0
    # and 200 are 160 apart): whichever pair FINCH's second level or the merging takes, 0-2 stay apart
    two = finch_clusters(POINTS, 2)
    assert two.max() == 1 and two[0] != two[5]
    assert finch_clusters(POINTS[:2], 5).tolist() == [0, 1]  # fewer points than clusters: one each


def test_open_set_loss_by_hand():
    # K = 2, one IN example of class 0 and one OOD; head probabilities given directly
    p = torch.tensor([[[0.2, 0.6], [0.8, 0.4]],    # p0 = (0.2, 0.6), p1 = (0.8, 0.4)
                      [[0.5, 0.9], [0.5, 0.1]]])
    targets = torch.tensor([0, 2])
    eps = 1e-8
    pos, neg = -math.log(0.8 + eps), -math.log(0.6 + eps)  # the hardest negative: head 1's p0
    pos_ood = 0.4 * (-math.log(0.5 + eps) - math.log(0.1 + eps))
    neg_ood = 0.4 * (-math.log(0.5 + eps) - math.log(0.9 + eps))
    want = 0.5 * 0.2 * (pos + neg) + 0.5 * (pos_ood + neg_ood)
    assert open_set_loss(p, targets, 2, True).item() == pytest.approx(want, rel=1e-6)
    assert open_set_loss(p[:1], targets[:1], 2, False).item() == pytest.approx(0.5 * (pos + neg), rel=1e-6)


def test_cluster_regularizer_by_hand():
    feats = torch.tensor([[0.0], [3.0]])
    centers = torch.tensor([[1.0], [4.0]])
    own = torch.tensor([0, 1])
    # d = [[1, 4], [2, 1]]: intra mean(1, 1) = 1; inter log(1 + e^(1-4)), log(1 + e^(1-2))
    want = 0.1 * 1.0 + (math.log1p(math.exp(-3)) + math.log1p(math.exp(-1))) / 2
    assert cluster_regularizer(feats, own, centers).item() == pytest.approx(want, rel=1e-6)


def test_diverse_lowest_by_hand():
    s = np.array([0.5, 0.1, 0.3, 0.2, 0.9, 0.4])
    clusters = np.array([0, 0, 0, 1, 1, 1])
    # b = 4, 2 clusters: 2 per visit: cluster 0's 1, 2, cluster 1's 3, 5
    assert diverse_lowest(s, clusters, 4).tolist() == [1, 2, 3, 5]
    assert diverse_lowest(s, clusters, 3).tolist() == [1, 3, 2]  # 1 per visit
    assert diverse_lowest(s, np.arange(6), 2).tolist() == [1, 3]  # more clusters than b: the lowest s


def test_strategy_on_separable_embeddings():
    view, kind = _view()
    selection = make_strategy("eoal").select(view, 40)
    picked = selection.indices
    assert len(set(picked.tolist())) == 40 and np.isin(picked.numpy(), view.candidates.numpy()).all()
    assert (kind[picked] < 2).float().mean() >= 0.9
    assert selection.extra["eoal_ood_clusters"] == 2 and np.isfinite(selection.extra["eoal_detector_loss"])
    assert set(selection.columns) == {"eoal_s", "eoal_closed_entropy", "eoal_open_entropy", "eoal_predicted_known"}
    assert make_strategy("eoal").select(_view()[0], 40).indices.tolist() == picked.tolist()
    plain = make_strategy("eoal", eoal_query="lowest").select(_view()[0], 40)
    s, known = plain.columns["eoal_s"], plain.columns["eoal_predicted_known"].bool()
    rows = torch.searchsorted(view.candidates, plain.indices)
    assert int(known.sum()) >= 40 and bool(known[rows].all())
    unpicked = known.clone()
    unpicked[rows] = False
    assert float(s[rows].max()) <= float(s[unpicked].min())  # without diversity: the lowest s predicted known
    with pytest.raises(ValueError, match="eoal_query"):
        make_strategy("eoal", eoal_query="x")
