"""Purity scores beyond the target model's softmax (ReAct), the AUROC metric and the records
the loop keeps of them."""
import math

import numpy as np
import pytest
import torch

from mqnet_fast.metrics import auroc
from mqnet_fast.scores import purity, react_energy, react_threshold
from mqnet_fast.strategies import RoundView, make_strategy


def test_react_clips_at_the_labeled_in_percentile_then_takes_the_energy():
    labeled_in = torch.arange(10.0).reshape(5, 2)  # activations 0..9: 90th percentile 8.1 (linear)
    assert react_threshold(labeled_in).item() == pytest.approx(8.1)
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        head.bias.copy_(torch.tensor([0.5, -1.0]))
    feats = torch.tensor([[10.0, 1.0], [2.0, 3.0]])
    # row 0: 10 clipped to 8.1 -> logits (8.6, 1.0); row 1 unclipped -> (2.5, 5.0)
    expected = [math.log(math.exp(8.6) + math.exp(1.0)), math.log(math.exp(2.5) + math.exp(5.0))]
    assert react_energy(feats, head, react_threshold(labeled_in)).tolist() == pytest.approx(expected, rel=1e-6)


def test_react_purity_from_a_round_view():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Module()
    model.linear = torch.nn.Linear(4, 3)
    feats, labeled = torch.rand(20, 4, generator=g), torch.rand(6, 4, generator=g)
    is_in = torch.tensor([True, False, True, True, False, False])
    view = RoundView(torch.arange(20), torch.softmax(torch.rand(20, 3, generator=g), 1), feats, g,
                     labeled_feats=labeled, labeled_is_in=is_in, model=model)
    expected = react_energy(feats, model.linear, react_threshold(labeled[is_in]))
    assert torch.equal(purity("react", view), expected)
    # the threshold comes from the labeled IN rows only: an OOD row's huge activations do not move it
    labeled[1] = 1e6
    assert torch.equal(purity("react", view), expected)
    with pytest.raises(ValueError, match="purity 'react' needs model"):
        purity("react", RoundView(torch.arange(20), view.probs, feats, g, labeled_feats=labeled, labeled_is_in=is_in))


def test_auroc_hand_worked_and_with_ties():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # pairs (pos, neg): (0.5, 0.5) tie = 1/2, (0.5, 0.1) = 1, (0.3, 0.5) = 0, (0.3, 0.1) = 1 -> 2.5 / 4
    assert auroc([0.5, 0.3, 0.5, 0.1], [True, True, False, False]) == 0.625
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_auroc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.RandomState(0)
    for n in (2, 17, 300):
        scores = rng.randint(0, 4, n).astype(float)
        positive = np.arange(n) % 3 == 0
        assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)


def test_mqnet_standardizations():
    g = torch.Generator().manual_seed(0)
    view = RoundView(torch.arange(40), torch.softmax(torch.randn(40, 3, generator=g), 1), torch.rand(40, 5, generator=g),
                     g, labeled_feats=torch.rand(4, 5, generator=g), labeled_is_in=torch.tensor([1, 1, 0, 1]).bool())
    knn_conf = dict(purity="knn", informativeness="conf")
    raw = make_strategy("mqnet", **knn_conf).raw_scores(view)
    z = (raw - raw.mean(0)) / raw.std(0)
    assert torch.allclose(make_strategy("mqnet", **knn_conf).meta_inputs(view), z, atol=1e-6)
    assert torch.allclose(make_strategy("mqnet", standardize="exp-zscore", **knn_conf).meta_inputs(view), torch.exp(z), atol=1e-6)
    selection = make_strategy("mqnet", standardize="exp-zscore", selection="top", **knn_conf).select(view, 5)
    assert set(selection.indices.tolist()) == set(torch.topk(torch.exp(z).sum(1), 5).indices.tolist())
    assert torch.equal(selection.columns["purity"], raw[:, 0])
    with pytest.raises(ValueError, match="standardize must be one of"):
        make_strategy("mqnet", standardize="minmax")


def test_run_cache_disk_key_covers_the_pool_its_images_the_seed_and_the_config():
    from mqnet_fast.cache import RunCache

    pool = np.arange(10)
    base = RunCache("digits", 0, pool, data_digest="a").disk_key(epochs=3)
    assert RunCache("digits", 0, pool.copy(), data_digest="a").disk_key(epochs=3) == base
    for other in (RunCache("digits", 0, pool, data_digest="b").disk_key(epochs=3),   # an image changed
                  RunCache("digits", 1, pool, data_digest="a").disk_key(epochs=3),
                  RunCache("digits", 0, pool[1:], data_digest="a").disk_key(epochs=3),
                  RunCache("other", 0, pool, data_digest="a").disk_key(epochs=3),
                  RunCache("digits", 0, pool, data_digest="a").disk_key(epochs=4)):
        assert other != base
