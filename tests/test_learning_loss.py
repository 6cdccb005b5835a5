"""Learning loss (Yoo & Kweon, CVPR 2019): the loss-prediction module, its training with the target
model (ranking loss, detach point), the `ll` informativeness and strategy, and the loop end to end."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mqnet_fast import ops
from mqnet_fast.data import load_digits
from mqnet_fast.experiment import Experiment, ExperimentConfig
from mqnet_fast.models import LossPredictionModule, ResNet18
from mqnet_fast.scores import informativeness
from mqnet_fast.strategies import RoundView, make_strategy
from mqnet_fast.training import DeviceImages, TrainConfig, infer, make_model, train_model
from mqnet_fast.training.optim import set_lr, sgd
from mqnet_fast.training.inference import Inference
from mqnet_fast.training.loop import device_autocast, shuffled_batches
from mqnet_fast.training.target import loss_prediction_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def images(digits):
    mean, std = DeviceImages.channel_stats(digits.train_images)
    return DeviceImages(digits.train_images, mean, std, CPU, digits.flip)


def _named_grads(model, prefix_filter):
    return {n: p.grad for n, p in model.named_parameters() if prefix_filter(n)}


# --------------------------------------------------------------------------------------------------
# The module

def test_module_shapes_and_stage_check():
    model = ResNet18(3, 1, width=8)
    module = LossPredictionModule(model.stage_channels, hidden=16)
    stages = model.stages(torch.randn(5, 1, 8, 8))
    assert [s.shape[1] for s in stages] == list(model.stage_channels)
    assert module(stages).shape == (5,)
    assert module(model.stages(torch.randn(3, 1, 32, 32))).shape == (3,)  # any input size: global pooling
    assert module(model.stages(torch.randn(0, 1, 8, 8))).shape == (0,)
    assert sum(p.numel() for p in module.parameters()) == sum(c * 16 + 16 for c in (8, 16, 32, 64)) + 4 * 16 + 1
    with pytest.raises(ValueError, match="stages holds 3 tensors, expected 4"):
        module(stages[:3])


def test_module_is_the_papers_architecture():
    """GAP -> FC -> ReLU per stage, concatenated -> FC 1, checked against the formula."""
    torch.manual_seed(0)
    module = LossPredictionModule((2, 3), hidden=4)
    stages = [torch.randn(6, 2, 4, 4), torch.randn(6, 3, 2, 2)]
    hidden = [F.relu(fc(s.mean((2, 3)))) for fc, s in zip(module.hidden, stages)]
    expected = module.linear(torch.cat(hidden, 1))[:, 0]
    torch.testing.assert_close(module(stages), expected)


def test_make_model_attaches_a_seeded_loss_module():
    plain = make_model(10, 1, CPU, seed=3)
    with_module = make_model(10, 1, CPU, seed=3, loss_module=True)
    assert not hasattr(plain, "loss_module")
    assert isinstance(with_module.loss_module, LossPredictionModule)
    assert with_module.loss_module.stage_channels == with_module.stage_channels
    # a registered submodule: the trainer's one optimizer sees its parameters
    names = [n for n, _ in with_module.named_parameters()]
    assert any(n.startswith("loss_module.") for n in names)
    # the backbone starts where it starts without the module
    plain_state, module_state = plain.state_dict(), with_module.state_dict()
    assert all(torch.equal(plain_state[k], module_state[k]) for k in plain_state)
    # the module's weights are a function of the seed only
    torch.manual_seed(12345)
    again = make_model(10, 1, CPU, seed=3, loss_module=True).loss_module.state_dict()
    other = make_model(10, 1, CPU, seed=4, loss_module=True).loss_module.state_dict()
    first = with_module.loss_module.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# --------------------------------------------------------------------------------------------------
# The ranking loss

def test_ranking_loss_hand_worked_pairs():
    # the batch against its reverse: pairs (0, 5), (1, 4), (2, 3)
    predicted = torch.tensor([0.50, 0.20, 0.90, 0.30, 0.25, 0.10])
    target = torch.tensor([2.0, 0.0, 1.0, 1.0, 3.0, 1.0])
    # (0,5): l0 > l5, s = +1: max(0, 1 - (0.50 - 0.10)) = 0.60
    # (1,4): l1 < l4, s = -1: max(0, 1 + (0.20 - 0.25)) = 0.95
    # (2,3): tie, counted as l2 < l3 (s = -1): max(0, 1 + (0.90 - 0.30)) = 1.60
    assert loss_prediction_loss(predicted, target).item() == pytest.approx((0.60 + 0.95 + 1.60) / 3)
    # margin 0.1: 0 + 0.05 + 0.70
    assert loss_prediction_loss(predicted, target, margin=0.1).item() == pytest.approx((0.0 + 0.05 + 0.70) / 3)
    # ordered beyond the margin: no cost; ordered the wrong way: margin plus the violation
    assert loss_prediction_loss(torch.tensor([3.0, 0.5]), torch.tensor([2.0, 1.0])).item() == 0.0
    assert loss_prediction_loss(torch.tensor([0.5, 3.0]), torch.tensor([2.0, 1.0])).item() == pytest.approx(3.5)
    # odd batch: pair (0, 2), the middle example unpaired; one example: no pair, no loss
    assert loss_prediction_loss(torch.tensor([0.0, 100.0, 0.4]), torch.tensor([1.0, 50.0, 0.0])).item() \
        == pytest.approx(1.4)
    assert loss_prediction_loss(torch.tensor([0.7]), torch.tensor([1.0])).item() == 0.0


def test_ranking_loss_gradient_and_detached_target():
    predicted = torch.tensor([0.2, 0.9, 0.5, 0.1], requires_grad=True)
    target = torch.tensor([3.0, 1.0, 2.0, 0.0], requires_grad=True)
    # pairs (0,3): s=+1, 1 - 0.1 = 0.9 > 0; (1,2): s=-1, 1 + 0.4 = 1.4 > 0; mean over 2 pairs
    loss = loss_prediction_loss(predicted, target)
    assert loss.item() == pytest.approx((0.9 + 1.4) / 2)
    loss.backward()
    # d/d lhat: pair (0,3) pushes lhat_0 up and lhat_3 down, pair (1,2) lhat_1 down and lhat_2 up
    torch.testing.assert_close(predicted.grad, torch.tensor([-0.5, 0.5, -0.5, 0.5]))
    assert target.grad is None  # the true losses only set the order (through a comparison): no gradient


# --------------------------------------------------------------------------------------------------
# Training with the module

@pytest.fixture(scope="module")
def labels(digits):
    return torch.from_numpy(digits.train_labels[:64])


def _train_one_step(images, labels, loss_module, **config):
    """A fresh model (with or without the module) after train_model of one iteration on the first 64
    images; the gradients of that step are still on the parameters (the trainer zeroes them before
    each backward, not after)."""
    model = make_model(10, 1, CPU, seed=0, loss_module=loss_module)
    train_model(model, images, torch.arange(64), labels, TrainConfig(iterations=1, batch_size=16, **config), seed=1,
                show_progress=False)
    return model


def _assert_module_learns(model):
    """Every weight of the module gets a gradient. (Not the biases: the ranking loss is invariant to
    a shift of the predicted losses, so the output bias's gradient is 0, and so is a hidden bias's
    where its unit is active on every example.)"""
    grads = _named_grads(model, lambda n: n.startswith("loss_module."))
    assert len(grads) == 10 and all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.endswith("weight"))
    assert grads["loss_module.linear.bias"].abs().item() < 1e-6


def test_gradients_flow_into_module_and_backbone_before_the_detach_point(images, labels):
    assert TrainConfig(iterations=200).loss_module_detach_step == 120
    assert TrainConfig(iterations=3).loss_module_detach_step == 2
    assert TrainConfig(iterations=1).loss_module_detach_step == 1  # step 0 is before it
    plain = _train_one_step(images, labels, loss_module=False)
    model = _train_one_step(images, labels, loss_module=True)
    _assert_module_learns(model)
    backbone = _named_grads(model, lambda n: not n.startswith("loss_module."))
    ce_only = _named_grads(plain, lambda n: True)
    assert set(backbone) == set(ce_only)
    assert all(g is not None for g in backbone.values())
    # the module's ranking loss reaches the backbone: its gradient is not that of the CE alone
    assert not all(torch.allclose(backbone[n], ce_only[n], rtol=1e-4, atol=1e-6) for n in backbone
                   if n.startswith("layer"))


def test_no_gradient_from_the_module_into_the_backbone_after_the_detach_point(images, labels):
    """Detached from step 0 on: the backbone's gradient is that of the CE alone (the plain model's
    on the same batch from the same start), while the module still learns."""
    assert TrainConfig(iterations=1, loss_module_detach_fraction=0.0).loss_module_detach_step == 0
    plain = _train_one_step(images, labels, loss_module=False)
    model = _train_one_step(images, labels, loss_module=True, loss_module_detach_fraction=0.0)
    _assert_module_learns(model)
    backbone = _named_grads(model, lambda n: not n.startswith("loss_module."))
    ce_only = _named_grads(plain, lambda n: True)
    for name, grad in backbone.items():
        torch.testing.assert_close(grad, ce_only[name], rtol=1e-5, atol=1e-7, msg=name)


def test_with_weight_zero_the_module_does_not_pull_on_the_backbone(images, labels):
    """With weight 0 the backbone's gradient is the CE's even before the detach point."""
    plain = _train_one_step(images, labels, loss_module=False)
    model = _train_one_step(images, labels, loss_module=True, loss_module_weight=0.0)
    ce_only = _named_grads(plain, lambda n: True)
    for name, grad in _named_grads(model, lambda n: not n.startswith("loss_module.")).items():
        torch.testing.assert_close(grad, ce_only[name], rtol=1e-5, atol=1e-7, msg=name)


def _pre_learning_loss_training(model, images, index, labels, config, seed):
    """The trainer's loop as it was before the loss module existed (per step: lr, one batch,
    cross-entropy of model(x), step), to check the plain path is unchanged bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = sgd(model.parameters(), config.lr, config.momentum, config.weight_decay)
    batches = shuffled_batches(len(index), config.batch_size, generator)
    tail = []
    model.train()
    for step in range(config.iterations):
        rows = next(batches)
        set_lr(optimizer, config.lr_at(step))
        with device_autocast(CPU):
            loss = F.cross_entropy(model(images.augmented_batch(index[rows], generator)), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= config.iterations - max(1, config.iterations // 10):
            tail.append(loss.detach())
    return float(torch.stack(tail).float().mean())


def test_plain_training_is_unchanged(images, labels):
    config = TrainConfig(iterations=6, batch_size=16)
    index = torch.arange(64)
    expected_model = make_model(10, 1, CPU, seed=2)
    expected = _pre_learning_loss_training(expected_model, images, index, labels, config, seed=5)
    model = make_model(10, 1, CPU, seed=2)
    assert train_model(model, images, index, labels, config, seed=5, show_progress=False) == expected
    expected_state, state = expected_model.state_dict(), model.state_dict()
    assert all(torch.equal(expected_state[k], state[k]) for k in state)


def test_training_with_the_module_is_reproducible(images, labels):
    config = TrainConfig(iterations=4, batch_size=16)
    index = torch.arange(64)
    a, b = make_model(10, 1, CPU, seed=2, loss_module=True), make_model(10, 1, CPU, seed=2, loss_module=True)
    loss_a = train_model(a, images, index, labels, config, seed=5, show_progress=False)
    loss_b = train_model(b, images, index, labels, config, seed=5, show_progress=False)
    assert loss_a == loss_b and np.isfinite(loss_a)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_infer_returns_the_predicted_loss(images):
    plain = infer(make_model(10, 1, CPU, seed=0), images, torch.arange(20))
    assert isinstance(plain, Inference) and plain.predicted_loss is None
    assert plain.logits.shape == (20, 10) and plain.feats.shape == (20, 512)
    model = make_model(10, 1, CPU, seed=0, loss_module=True)
    out = infer(model, images, torch.arange(20), batch_size=7)
    assert out.predicted_loss.shape == (20,) and out.predicted_loss.dtype == torch.float32
    with torch.no_grad():
        model.eval()
        stages = model.stages(images.batch(torch.arange(20)))
        torch.testing.assert_close(out.predicted_loss, model.loss_module(stages))
        torch.testing.assert_close(out.logits, model(images.batch(torch.arange(20))))
    torch.testing.assert_close(out.feats, plain.feats)  # the same backbone at initialization
    empty = infer(model, images, torch.zeros(0, dtype=torch.long))
    assert empty.predicted_loss.shape == (0,) and empty.feats.shape == (0, 512)


# --------------------------------------------------------------------------------------------------
# The score and the strategy

def _view(n=101, predicted=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    candidates = torch.from_numpy(np.sort(np.random.RandomState(seed).choice(3000, n, replace=False)))
    extras = {"predicted_loss": torch.randn(n, generator=g)} if predicted else {}
    return RoundView(candidates, torch.softmax(torch.randn(n, 4, generator=g), 1), torch.rand(n, 8, generator=g),
                     torch.Generator().manual_seed(seed + 1), extras=extras)


@pytest.mark.parametrize("budget", [1, 12, 101])
def test_ll_strategy_takes_the_top_predicted_losses(budget):
    view = _view()
    strategy = make_strategy("ll")
    assert strategy.uses_loss_module
    selection = strategy.select(view, budget)
    picked = selection.indices.numpy()
    assert picked.shape == (budget,) and len(np.unique(picked)) == budget
    predicted = view.extras["predicted_loss"]
    assert torch.equal(selection.scores, predicted)
    top = view.candidates[torch.argsort(predicted, descending=True)[:budget]]
    assert set(picked.tolist()) == set(top.tolist())
    assert torch.equal(selection.indices, view.candidates[ops.top_b(predicted, budget)])
    torch.testing.assert_close(informativeness("ll", view), predicted)


def test_ll_needs_the_predicted_loss():
    with pytest.raises(ValueError, match=r"informativeness 'll' needs extras\['predicted_loss'\]"):
        make_strategy("ll").select(_view(predicted=False), 3)
    bad = _view()
    bad.extras["predicted_loss"] = bad.extras["predicted_loss"][:-1]
    with pytest.raises(ValueError, match=r"has shape \(100,\), expected \(101,\)"):
        informativeness("ll", bad)


def test_which_strategies_use_the_loss_module():
    assert make_strategy("ll").uses_loss_module
    assert not make_strategy("conf").uses_loss_module
    assert not make_strategy("mqnet", informativeness="conf").uses_loss_module
    assert make_strategy("mqnet").uses_loss_module  # the paper's default: I = ll
    assert make_strategy("mqnet", informativeness="ll").uses_loss_module


def test_ll_end_to_end_on_digits(tmp_path, digits):
    """ll, and MQ-Net with I = ll sharing round 0's model (trained with the module) with it."""
    config = ExperimentConfig(strategies=["ll", "mqnet"], rounds=2, budget=12, iterations=3, encoder_epochs=1,
                              progress=False,
                              options={"informativeness": "ll", "meta_epochs": 2, "meta_min_steps": 5})
    experiment = Experiment(config, tmp_path / "run", data=digits)
    records = experiment.run()
    assert len(records) == 2 * 3
    split = experiment.splits[0]
    run = tmp_path / "run" / "ll" / "seed0"
    queries = json.loads((run / "queries.json").read_text())
    assert [len(q) for q in queries] == [12, 12]
    flat = np.array(queries[0] + queries[1])
    assert len(np.unique(flat)) == 24 and np.isin(flat, split.pool).all()
    assert not np.isin(flat, split.initial_labeled).any()
    with np.load(run / "scores" / "round_000.npz") as f:
        score, candidates, query = f["score"], f["candidates"], f["query"]
    assert np.isfinite(score).all() and np.unique(score).size > 1  # a predicted loss per candidate
    assert set(candidates[np.argsort(-score, kind="stable")[:12]]) == set(query)
    with np.load(tmp_path / "run" / "mqnet" / "seed0" / "scores" / "round_000.npz") as f:
        np.testing.assert_array_equal(f["informativeness"], score)  # the same round-0 model and module
    metrics = {name: json.loads((tmp_path / "run" / name / "seed0" / "metrics.json").read_text())
               for name in ("ll", "mqnet")}
    assert metrics["ll"][0]["test_accuracy"] == metrics["mqnet"][0]["test_accuracy"]
    assert [m["round"] for m in metrics["ll"]] == [0, 1, 2]
    assert metrics["ll"][2]["labeled_in"] + metrics["ll"][2]["labeled_ood"] == 12 * 3
