"""LfOSA: the per-class mixture posterior of the maximum activation value, on hand-made logits; the
K+1-class detector trained on labeled IN and OOD examples with the tempered loss; the strategy's
query in the loop."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mqnet_fast.strategies import RoundView, make_strategy
from mqnet_fast.strategies.lfosa import known_posterior, lfosa_scores
from mqnet_fast.training import DeviceFeatures, TrainConfig, make_model
from mqnet_fast.training.detector import train_detector


def test_known_posterior_separates_two_clusters():
    low, high = [0.0, 0.1, 0.2, 0.15], [10.0, 10.1, 10.2]
    w = known_posterior(np.array(low + high), seed=0)
    assert np.allclose(w[:4], 0, atol=1e-6) and np.allclose(w[4:], 1, atol=1e-6)
    assert known_posterior(np.array([3.0]), seed=0).tolist() == [0.0]  # no mixture of one value


def test_scores_are_per_predicted_class_and_zero_for_the_unknown_class():
    # class 0's MAVs cluster at 1 and 5, class 1's at 5 and 9: an MAV of 5 is "known" in class 0 and
    # "unknown" in class 1; rows predicted as class 2 (the unknown class, K = 2) score 0
    mav0 = [1.0, 1.1, 0.9, 5.0, 5.1, 4.9]
    mav1 = [5.0, 5.1, 4.9, 9.0, 9.1, 8.9]
    rows = [[m, -20.0, -20.0] for m in mav0] + [[-20.0, m, -20.0] for m in mav1] + [[0.0, 0.0, 3.0], [1.0, 0.0, 7.0]]
    w, mav, predicted = lfosa_scores(torch.tensor(rows, dtype=torch.float64), seed=0)
    assert predicted.tolist() == [0] * 6 + [1] * 6 + [2, 2]
    assert mav[:12].tolist() == mav0 + mav1
    assert np.allclose(w[:3], 0, atol=1e-4) and np.allclose(w[3:6], 1, atol=1e-4)
    assert np.allclose(w[6:9], 0, atol=1e-4) and np.allclose(w[9:12], 1, atol=1e-4)
    assert w[12:].tolist() == [0.0, 0.0]


def _view(seed=0, n_pool=400, d=8, k=2):
    """Embeddings: IN class c around +-3 e_c, OOD around 3 e_2; labeled 10 of each IN class and 10 OOD."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.zeros(3, d)
    centers[0, 0], centers[1, 0], centers[2, 1] = 3.0, -3.0, 3.0
    kind = torch.arange(n_pool) % 3
    pool = centers[kind] + 0.5 * torch.randn(n_pool, d, generator=g)
    labeled = torch.arange(30)
    candidates = torch.arange(30, n_pool)
    labels = torch.where(kind[labeled] < k, kind[labeled], torch.full((30,), -1))
    images = DeviceFeatures(pool.numpy(), torch.zeros(d), torch.ones(d), torch.device("cpu"))
    model = make_model(k, d, torch.device("cpu"), 0, arch="head", width=0).eval()
    probs = torch.softmax(model(pool[candidates]), 1).detach()
    return RoundView(candidates, probs, pool[candidates], torch.Generator().manual_seed(seed + 1),
                     labeled_feats=pool[labeled], labeled_is_in=labels >= 0, labeled=labeled, labeled_labels=labels,
                     model=model, images=images, train_config=TrainConfig(iterations=200, batch_size=16, lr=0.1)), kind


def test_detector_learns_the_extra_class():
    view, kind = _view()
    detector, loss = train_detector(view, view.train_config, seed=3)
    logits = detector(view.images.images[view.candidates])
    assert logits.shape == (len(view.candidates), 3)  # K + 1 outputs
    predicted = logits.argmax(1)
    accuracy = (predicted == kind[view.candidates]).float().mean()
    assert accuracy > 0.95 and np.isfinite(loss)


def test_detector_uses_the_given_loss():
    view, _ = _view()
    calls = []

    def tempered(logits, targets):
        calls.append(logits.shape[1])
        return F.cross_entropy(logits / 0.5, targets)
    cold, _ = train_detector(view, TrainConfig(iterations=20, batch_size=16, lr=0.1), seed=3, loss_fn=tempered)
    plain, _ = train_detector(view, TrainConfig(iterations=20, batch_size=16, lr=0.1), seed=3)
    assert calls == [3] * 20
    x = view.images.images[view.candidates]
    assert not torch.equal(cold(x), plain(x))  # same seeds, another loss: other weights


def test_strategy_queries_the_known_looking_candidates():
    view, kind = _view()
    selection = make_strategy("lfosa").select(view, 40)
    picked = selection.indices
    assert len(set(picked.tolist())) == 40 and np.isin(picked.numpy(), view.candidates.numpy()).all()
    assert (kind[picked] < 2).float().mean() >= 0.9  # the detector tells OOD apart: few OOD picks
    assert selection.extra["lfosa_predicted_unknown"] > 0 and "lfosa_mav" in selection.columns
    again = make_strategy("lfosa").select(_view()[0], 40)
    assert again.indices.tolist() == picked.tolist()
    with pytest.raises(ValueError, match="lfosa_temperature"):
        make_strategy("lfosa", lfosa_temperature=0.0)
