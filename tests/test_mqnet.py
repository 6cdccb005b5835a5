"""MQ-Net's meta-model: ranking loss, skyline property, agreement with the fused op, learning."""
import math

import pytest
import torch

from mqnet_fast import reference
from mqnet_fast.models import MetaModel
from mqnet_fast.training.meta import MetaTrainConfig, ranking_accuracy, ranking_loss, train_meta_model
from testing import assert_close, needs_cpp


def test_ranking_loss_hand_worked_pairs():
    # pairs (0, 3), (1, 4), (2, 5): first half against second half
    scores = torch.tensor([0.50, 0.20, 0.90, 0.30, 0.25, 0.10])
    targets = torch.tensor([2.0, 0.0, 1.0, 1.0, 3.0, 1.0])
    # pair (0,3): l0 > l3, sign +1: max(0, 0.1 - (0.50 - 0.30)) = 0
    # pair (1,4): l1 < l4, sign -1: max(0, 0.1 + (0.20 - 0.25)) = 0.05
    # pair (2,5): tie, left out
    assert ranking_loss(scores, targets, margin=0.1).item() == pytest.approx(0.05 / 2)
    # a wrongly ordered pair costs margin plus the violation
    assert ranking_loss(torch.tensor([0.0, 0.4]), torch.tensor([1.0, 0.0]), 0.1).item() == pytest.approx(0.5)
    # only ties (two OOD examples) and an odd example: no loss
    assert ranking_loss(torch.tensor([0.3, 0.1, 0.7]), torch.tensor([0.0, 0.0, 5.0])).item() == 0.0


def test_ranking_accuracy_counts_untied_pairs():
    targets = torch.tensor([0.0, 0.0, 1.0, 2.0])
    assert ranking_accuracy(torch.tensor([0.0, 0.5, 1.0, 2.0]), targets) == 1.0
    # pairs with distinct targets: (0,2) (0,3) (1,2) (1,3) (2,3); score 3.0 on row 1 inverts (1,2) and (1,3)
    assert ranking_accuracy(torch.tensor([0.0, 3.0, 1.0, 2.0]), targets) == pytest.approx(3 / 5)
    assert math.isnan(ranking_accuracy(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])))  # only ties
    assert ranking_accuracy(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])) == 1.0


def _assert_skyline(model, generator, n=4000):
    zi = torch.randn(n, 2, generator=generator) * 3
    zj = zi - torch.rand(n, 2, generator=generator) * torch.randint(0, 2, (n, 2), generator=generator)
    with torch.no_grad():
        assert bool((model(zi) >= model(zj)).all()), "z_i >= z_j componentwise but Phi(z_i) < Phi(z_j)"


def test_skyline_holds_for_any_weights_and_after_training():
    g = torch.Generator().manual_seed(0)
    model = MetaModel(seed=1)
    with torch.no_grad():  # arbitrary signed weights: relu(W) must still make Phi monotone
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)
    _assert_skyline(model, g)
    z = torch.randn(300, 2, generator=g)
    targets = torch.where(torch.rand(300, generator=g) < 0.5, torch.zeros(300), z[:, 0] - z[:, 1] + 3)
    train_meta_model(model, z, targets, MetaTrainConfig(epochs=4, min_steps_per_epoch=50), seed=0)
    _assert_skyline(model, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_agrees_with_fused_op_and_reference(dtype):
    g = torch.Generator().manual_seed(2)
    model = MetaModel(seed=5).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    z = torch.randn(1151, 2, generator=g, dtype=dtype)
    mean, std = z.mean(0), z.std(0)
    zs = (z - mean) / std
    expected = reference.nonneg_mlp_score(zs, model.weights, model.biases).detach()
    with torch.no_grad():
        assert_close(model(zs), expected, dtype)
    for backend in ("torch", "cpp"):
        if backend == "cpp" and "cpu" not in __import__("mqnet_fast").compiled_backends():
            continue
        assert_close(model.score(z, mean, std, backend=backend), expected, dtype)


def test_training_recovers_a_known_ordering():
    """Target loss increasing in P + 2I: Phi must learn the order (it starts far from it)."""
    g = torch.Generator().manual_seed(0)
    z = torch.rand(300, 2, generator=g)
    targets = z[:, 0] + 2 * z[:, 1]
    zs = (z - z.mean(0)) / z.std(0)
    model = MetaModel(seed=3)
    with torch.no_grad():  # start biased towards P only
        model.hidden.weight[:, 1] = 0.0
        model.hidden.weight[:, 0] = 2.0
    before = ranking_accuracy(model(zs), targets)
    stats = train_meta_model(model, zs, targets, MetaTrainConfig(), seed=0)
    assert before < 0.85
    assert stats.rank_accuracy > 0.97 and stats.loss < 0.02 and stats.steps == 10000


def test_meta_training_is_reproducible():
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    targets = torch.relu(z.sum(1))
    a, b = MetaModel(seed=0), MetaModel(seed=0)
    sa = train_meta_model(a, z, targets, MetaTrainConfig(epochs=3, min_steps_per_epoch=20), seed=7)
    sb = train_meta_model(b, z, targets, MetaTrainConfig(epochs=3, min_steps_per_epoch=20), seed=7)
    assert sa == sb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # "100 epochs" of a 40-example query set must still be 100 steps each
    assert sa.steps == 3 * 20


@needs_cpp
def test_compiled_meta_training_equals_the_eager_loop():
    """The same mini-batches and update rule through the op and through autograd + torch.optim.SGD:
    parameters equal to float tolerance, the same ranking accuracy and last-epoch loss."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(150, 2, generator=g)
    targets = torch.where(torch.rand(150, generator=g) < 0.4, torch.zeros(150), z[:, 0] + 2 * z[:, 1] + 5)
    config = MetaTrainConfig(epochs=8, min_steps_per_epoch=40)
    compiled, eager = MetaModel(seed=2), MetaModel(seed=2)
    stats_c = train_meta_model(compiled, z, targets, config, seed=5)
    stats_e = train_meta_model(eager, z, targets, config, seed=5, backend="torch")
    assert stats_c.steps == stats_e.steps == 8 * 40
    for a, b in zip(compiled.parameters(), eager.parameters()):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert stats_c.rank_accuracy == stats_e.rank_accuracy and stats_c.rank_accuracy > 0.6  # IN vs OOD pairs are random in z
    assert stats_c.loss == pytest.approx(stats_e.loss, abs=1e-5)
