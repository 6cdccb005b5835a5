"""Each strategy's contract: `budget` distinct unlabeled candidates, reproducible for a seed."""
import numpy as np
import pytest
import torch

from mqnet_fast import ops
from mqnet_fast.scores import entropy, informativeness, knn_purity, least_confidence, negative_margin
from mqnet_fast.strategies import STRATEGIES, RoundView, make_strategy


def _state(seed=0, n=257, k=4, d=33, labeled=19):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, d, generator=g)
    probs = torch.softmax(torch.randn(n, k, generator=g) * 2, 1)
    lab = torch.rand(labeled, d, generator=g)
    predicted_loss = torch.rand(n, generator=g)  # what a target model with the loss module gives (ll)
    candidates = torch.from_numpy(np.sort(np.random.RandomState(seed).choice(5000, n, replace=False)))
    return RoundView(candidates, probs, feats, torch.Generator().manual_seed(seed + 1), labeled_feats=lab,
                     labeled_is_in=torch.arange(labeled) < labeled // 2, extras={"predicted_loss": predicted_loss})


def _make(name):
    """Strategies that run on the view alone: MQ-Net with scores of the target model's outputs (the
    CSI purity needs the pool's images and the run cache; tests/test_contrastive.py covers it)."""
    return make_strategy(name, purity="knn", informativeness="conf") if name == "mqnet" else make_strategy(name)


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("budget", [1, 17, 257])
def test_contract(name, budget):
    state = _state()
    selection = _make(name).select(state, budget)
    picked = selection.indices.numpy()
    assert picked.shape == (budget,) and len(np.unique(picked)) == budget
    assert np.isin(picked, state.candidates.numpy()).all()
    if selection.scores is not None:
        assert selection.scores.shape == (257,)
    again = _make(name).select(_state(), budget)
    np.testing.assert_array_equal(picked, again.indices.numpy())


def test_uncertainty_strategies_take_the_top_scores():
    state = _state()
    for name, score in (("conf", least_confidence), ("entropy", entropy), ("margin", negative_margin)):
        expected = state.candidates[ops.top_b(score(state.probs), 10)]
        assert torch.equal(make_strategy(name).select(state, 10).indices, expected)


def test_coreset_uses_labeled_rows_as_centers():
    state = _state()
    x = torch.cat([state.labeled_feats, state.feats])
    res = ops.kcenter_greedy(x, torch.arange(19), 5, backend="torch")
    assert torch.equal(make_strategy("coreset").select(state, 5).indices, state.candidates[res.indices - 19])


def test_mqnet_first_round_ranks_by_standardized_p_plus_i():
    state = _state()
    z = torch.stack([knn_purity(state.feats, state.labeled_in_feats), least_confidence(state.probs)], 1)
    z = (z - z.mean(0)) / z.std(0)
    expected = state.candidates[ops.top_b(z.sum(1), 12)]
    assert torch.equal(_make("mqnet").select(state, 12).indices, expected)


def test_scores():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.7, 0.3]])
    assert torch.allclose(least_confidence(probs), torch.tensor([0.0, 0.5, 0.3]))
    assert torch.allclose(entropy(probs)[:2], torch.tensor([0.0, np.log(2)], dtype=torch.float32))
    assert torch.allclose(negative_margin(probs), torch.tensor([-1.0, 0.0, -0.4]))
    assert torch.equal(knn_purity(torch.rand(3, 4), torch.zeros(0, 4)), torch.zeros(3))
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(knn_purity(feats, torch.tensor([[3.0, 0.0]])), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="informativeness must be one of"):
        informativeness("bald", None)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="strategy 'conf' has no option 'purity'"):
        make_strategy("conf", purity="knn")


def test_stage_features_of_the_candidates():
    from mqnet_fast.data import load_digits
    from mqnet_fast.training import DeviceImages, infer, make_model

    data = load_digits()
    images = DeviceImages(data.train_images[:40], *DeviceImages.channel_stats(data.train_images), torch.device("cpu"),
                          False)
    model = make_model(3, 1, torch.device("cpu"), seed=0, width=4)
    candidates = torch.tensor([3, 7, 11, 30])
    out = infer(model, images, candidates)
    view = RoundView(candidates, torch.softmax(out.logits, 1), out.feats, torch.Generator(), model=model, images=images)
    stages = view.stage_features()
    assert [s.shape for s in stages] == [(4, c) for c in (4, 8, 16, 32)]
    assert torch.allclose(stages[-1], out.feats, atol=1e-6)  # the last stage pooled = the penultimate features
    assert view.stage_features() is stages  # computed once
