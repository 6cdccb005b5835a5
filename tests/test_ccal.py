"""CCAL: the semantic and distinctive scores on hand-worked cases, the per-class quota query, the
SimCLR (shifts = 1) encoder, and the strategy in the loop on digits."""
import math

import numpy as np
import pytest
import torch

from mqnet_fast.strategies import make_strategy
from mqnet_fast.strategies.base import class_quota_query
from mqnet_fast.strategies.ccal import distinctive_scores, semantic_scores


def test_semantic_score_by_hand():
    r = 2 ** -0.5
    labeled = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([3, 1])
    candidates = torch.tensor([[1.0, 0.0], [r, r], [0.0, 2.0], [-1.0, 0.1]])
    sem, pseudo = semantic_scores(candidates, labeled, labels, k=100.0, t=0.9)
    # largest cosines 1, r, 1, 0.0995 (to e2); scaled (s - min) / (max - min)
    s = torch.tensor([1.0, r, 1.0, 0.1 / math.sqrt(1.01)], dtype=torch.float64)
    scaled = (s - s.min()) / (s.max() - s.min())
    assert torch.allclose(sem, torch.tanh(100 * (scaled - 0.9) / 2))
    assert pseudo.tolist() == [3, 3, 1, 1]  # r ties e1 and e2: the lower labeled row


def test_distinctive_score_by_hand():
    # one rotation; class references e1, (e1 + e2)/sqrt2, e2
    r = 2 ** -0.5
    refs = torch.tensor([[[1.0, 0.0]], [[r, r]], [[0.0, 1.0]]])
    cand = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # e1: c1 = 1 (e1), c2 = r (the diagonal), cos(A, B) = r: (1 - r) + r + 1 = 2
    # e2: c1 = 1 (e2), c2 = r, cos = r: 2 as well
    assert torch.allclose(distinctive_scores(cand, refs), torch.tensor([2.0, 2.0], dtype=torch.float64))
    refs2 = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # e1 against {e1, e2}: c1 = 1, c2 = 0, cos(A, B) = 0: 1 + 0 + 1 = 2; (r, r): c1 = c2 = r, cos 0: 0 + 0 + r
    got = distinctive_scores(torch.tensor([[[1.0, 0.0]], [[r, r]]]), refs2)
    assert torch.allclose(got, torch.tensor([2.0, r], dtype=torch.float64))
    one = distinctive_scores(torch.tensor([[[1.0, 0.0]], [[r, r]]]), refs2[:1])  # A = B: (c1 - c1) + 1 + c1
    assert torch.allclose(one, torch.tensor([2.0, 1 + r], dtype=torch.float64))
    two_rotations = torch.cat([cand, cand.flip(2)], 1)  # rotation 2 swaps the axes: the mean of both
    refs_two = torch.cat([refs, refs.flip(2)], 1)
    assert torch.allclose(distinctive_scores(two_rotations, refs_two), torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_query_takes_per_class_quotas():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.95, 0.2])
    pseudo = torch.tensor([0, 0, 0, 0, 1, 2])
    # b = 5, K = 3: quotas 2, 2, 1; class 0 gives 0, 1; class 1 has only row 4; class 2 row 5; the
    # leftover 1 goes to the best of the rest: row 2
    assert class_quota_query(scores, pseudo, 3, 5).tolist() == [0, 1, 4, 5, 2]
    assert class_quota_query(scores, pseudo, 3, 2).tolist() == [0, 4]


def test_simclr_encoder_has_no_shift_loss():
    from mqnet_fast.training.contrastive import EncoderConfig, csi_loss
    from mqnet_fast.training.augment import csi_views
    from mqnet_fast.data import load_digits
    from mqnet_fast.training import DeviceImages

    digits = load_digits()
    mean, std = DeviceImages.channel_stats(digits.train_images)
    images = DeviceImages(digits.train_images, mean, std, torch.device("cpu"), False)
    views, labels = csi_views(images, torch.arange(6), torch.Generator().manual_seed(0), shifts=1)
    assert views.shape[0] == 12 and labels.tolist() == [0] * 12
    projections, logits = torch.randn(12, 8), torch.randn(12, 4)
    total, contrastive, shift = csi_loss(projections, logits, labels, 0.5, shifts=1)
    assert float(shift) == 0.0 and torch.equal(total, contrastive)
    with pytest.raises(ValueError, match="shifts"):
        EncoderConfig(shifts=2)


def test_ccal_in_the_loop_on_digits(tmp_path):
    from mqnet_fast.data import load_digits
    from mqnet_fast.experiment import Experiment
    from testing import tiny_config

    experiment = Experiment(tiny_config(strategies=["ccal"], rounds=2), tmp_path / "run", data=load_digits())
    records = experiment.run()
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(r["query_in"] + r["query_ood"] == 12 for r in records[:2])
    scores = np.load(tmp_path / "run" / "ccal" / "seed0" / "scores" / "round_000.npz")
    assert {"ccal_score", "ccal_semantic", "ccal_pseudo_class"} <= set(scores.files)
    # the semantic (SimCLR) and distinctive (CSI) encoders are two cache entries
    cache = experiment._run_cache(0)
    kinds = {key[0] for key in cache.memo}
    assert {"csi-encoder", "ccal-semantic", "csi-pool-rotation-embeddings"} <= kinds
    shifts = {key[1].shifts for key in cache.memo if key[0] == "csi-encoder"}
    assert shifts == {1, 4}
