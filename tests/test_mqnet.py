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


# --------------------------------------------------------------------------------------------------
# The strategy's options across rounds (meta_init, meta_history, the purity rule, selection)

def _mq_view(probs, seed=0):
    from mqnet_fast.strategies import RoundView

    probs = torch.tensor(probs)
    return RoundView(torch.arange(100, 100 + len(probs)), probs, torch.randn(len(probs), 3),
                     torch.Generator().manual_seed(seed))


def _mq(purity, **options):
    from mqnet_fast.strategies import make_strategy

    strategy = make_strategy("mqnet", informativeness="conf", meta_epochs=3, meta_min_steps=10, **options)
    strategy.purity_fn = lambda view: torch.tensor(purity, dtype=torch.float32)
    return strategy


# Six candidates: P ranks rows 0-2 high, least confidence ranks rows 3-5 high (the README's trap:
# purity and informativeness disagree, and the z-scored sum ties them).
PURITY_6 = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3]
PROBS_6 = [[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.5, 0.5], [0.55, 0.45], [0.6, 0.4]]


def test_mqnet_all_ood_query_sends_the_next_one_to_purity():
    """An all-OOD query (every loss 0) carries no ranking signal: Phi is not trained, and the next
    query ranks by the standardized purity alone (meta_rule "purity"); a query with signal then
    trains Phi and hands the ranking back to it."""
    strategy = _mq(PURITY_6)
    view = _mq_view(PROBS_6)
    first = strategy.select(view, 2)
    assert first.extra["meta_rule"] == "sum"
    record = strategy.observe(view, first, torch.tensor([3, 5]), torch.zeros(2), seed=1)
    assert record["meta_steps"] == 0 and not strategy.trained
    second = strategy.select(view, 2)
    assert second.extra["meta_rule"] == "purity"
    assert second.indices.tolist() == [100, 101]  # the two purest rows
    assert torch.equal(second.columns["meta_score"], second.columns["purity_std"])
    record = strategy.observe(view, second, torch.tensor([0, 1]), torch.tensor([0.4, 0.9]), seed=2)
    assert record["meta_steps"] == 3 * 10 and strategy.trained
    assert strategy.select(view, 2).extra["meta_rule"] == "phi"


def test_mqnet_history_all_learns_from_an_all_ood_query_after_an_in_one():
    """meta_history "all": an all-OOD query after one with IN examples is ranked against them (IN
    losses > 0 = OOD losses), so Phi trains; with "last" it has nothing to learn from."""
    view = _mq_view(PROBS_6)
    records = {}
    for history in ("last", "all"):
        strategy = _mq(PURITY_6, meta_history=history)
        strategy.observe(view, strategy.select(view, 2), torch.tensor([0, 1]), torch.tensor([0.4, 0.9]), seed=1)
        records[history] = strategy.observe(view, strategy.select(view, 2), torch.tensor([3, 4]), torch.zeros(2),
                                            seed=2)
        assert len(strategy.history) == (1 if history == "last" else 2)
    assert records["last"]["meta_steps"] == 0
    assert records["all"]["meta_steps"] == 3 * 10
    assert not math.isnan(records["all"]["meta_rank_accuracy"])  # pairs across the two queries
    assert math.isnan(records["last"]["meta_rank_accuracy"])


def test_mqnet_meta_init_fresh_retrains_from_scratch_and_warm_continues():
    """fresh: round 2's Phi is the one a new Phi (seeded by observe's seed) trains on query 2 alone;
    warm: the Phi of round 1 trained further, which differs."""
    from mqnet_fast.strategies.mqnet import MetaModel, train_meta_model

    view = _mq_view(PROBS_6)
    q1, l1 = torch.tensor([0, 3, 4]), torch.tensor([0.5, 0.0, 0.0])
    q2, l2 = torch.tensor([1, 2, 5]), torch.tensor([0.2, 0.9, 0.0])
    trained = {}
    for init in ("fresh", "warm"):
        strategy = _mq(PURITY_6, meta_init=init, meta_history="last")
        strategy.observe(view, strategy.select(view, 3), q1, l1, seed=1)
        selection = strategy.select(view, 3)
        strategy.observe(view, selection, q2, l2, seed=2)
        trained[init] = torch.cat([w.flatten() for w in strategy.model.weights])
    z = torch.stack([selection.columns["purity_std"], selection.columns["informativeness_std"]], 1)
    scratch = MetaModel(seed=2, init=strategy.options.recipe.init)
    train_meta_model(scratch, z[q2], l2, strategy.meta_config, seed=2)
    assert torch.equal(trained["fresh"], torch.cat([w.flatten() for w in scratch.weights]))
    assert not torch.equal(trained["warm"], trained["fresh"])


def test_mqnet_records_weights_in_use_and_the_query_rank_accuracy():
    """query_rank_accuracy: the rule that chose the query, on the query's losses (here P + I ranks
    row 0 above row 3, and row 0 has the larger loss: 1.0); meta_weights_positive in (0, 1]."""
    strategy = _mq(PURITY_6)
    view = _mq_view(PROBS_6)
    selection = strategy.select(view, 6)
    record = strategy.observe(view, selection, torch.tensor([0, 3]), torch.tensor([0.8, 0.0]), seed=1)
    z = torch.stack([selection.columns["purity_std"], selection.columns["informativeness_std"]], 1)
    want = 1.0 if z[0].sum() > z[3].sum() else 0.0
    assert record["query_rank_accuracy"] == want
    assert 0.0 < record["meta_weights_positive"] <= 1.0
    assert all(float(w.detach().min()) >= 0 for w in strategy.model.weights)


def test_mqnet_per_class_selection_gives_each_predicted_class_its_quota():
    """Rows 0-3 predicted class 0 and ranked above rows 4-5 (class 1): top-b takes four of class
    0, per-class two of each."""
    probs = [[0.9, 0.1]] * 4 + [[0.02, 0.98]] * 2  # class 1 also the more confident: ranked last by P + I
    purity = [0.9, 0.8, 0.7, 0.6, 0.1, 0.0]
    top = _mq(purity, selection="top").select(_mq_view(probs), 4)
    per_class = _mq(purity, selection="per-class").select(_mq_view(probs), 4)
    predicted = torch.tensor(probs).argmax(1)
    assert predicted[top.indices - 100].tolist().count(0) == 4
    assert sorted(predicted[per_class.indices - 100].tolist()) == [0, 0, 1, 1]


def test_mqnet_state_dict_round_trip_keeps_history_and_rule():
    strategy = _mq(PURITY_6, meta_history="all")
    view = _mq_view(PROBS_6)
    strategy.observe(view, strategy.select(view, 2), torch.tensor([3, 5]), torch.zeros(2), seed=1)
    restored = _mq(PURITY_6, meta_history="all")
    restored.load_state_dict(strategy.state_dict())
    assert restored.purity_next and len(restored.history) == 1
    assert torch.equal(restored.select(view, 2).indices, strategy.select(view, 2).indices)


@pytest.mark.parametrize("option, value", [("meta_init", "cold"), ("meta_optimizer", "adam"),
                                           ("meta_history", "some"), ("selection", "random"),
                                           ("meta_margin", -1.0)])
def test_mqnet_refuses_bad_options_by_name(option, value):
    from mqnet_fast.strategies import make_strategy

    with pytest.raises(ValueError, match=option):
        make_strategy("mqnet", **{option: value})


def test_mqnet_meta_optimizer_recipes():
    """The recipes as documented: the published code's (lr 0.001, plain SGD, batch 32, margin 1,
    U(0, 1) init), the paper's lr 0.01, and the earlier momentum recipe; meta_margin overrides."""
    from mqnet_fast.strategies import make_strategy

    code = make_strategy("mqnet", meta_optimizer="code")
    assert (code.meta_config.lr, code.meta_config.momentum, code.meta_config.weight_decay,
            code.meta_config.batch_size, code.meta_config.margin) == (0.001, 0.0, 0.0, 32, 1.0)
    assert float(code.model.out.bias.detach()) >= 0 and float(code.model.hidden.weight.detach().max()) > 0.5  # U(0, 1)
    assert make_strategy("mqnet", meta_optimizer="paper").meta_config.lr == 0.01
    momentum = make_strategy("mqnet", meta_optimizer="momentum", meta_margin=0.5).meta_config
    assert (momentum.momentum, momentum.weight_decay, momentum.margin) == (0.9, 5e-4, 0.5)


def _per_class_shard_worker(rank, init_file, out_file):
    import datetime

    import torch.distributed as dist

    from mqnet_fast.world import World
    from mqnet_fast.strategies import RoundView
    from mqnet_fast.strategies.base import Shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    probs, purity = _SHARD_CASE
    offsets = [0, 2, 6]  # rank 0 holds rows 0-1, rank 1 rows 2-5
    rows = slice(offsets[rank], offsets[rank + 1])
    candidates = torch.arange(100, 106)
    view = RoundView(candidates[rows], torch.tensor(probs)[rows], torch.zeros(offsets[rank + 1] - offsets[rank], 3),
                     torch.Generator(), shard=Shard(World(), offsets, candidates))
    strategy = _mq(purity[rows], selection="per-class")
    picks = strategy.select(view, 4).indices.tolist()
    gathered = [None, None]
    dist.all_gather_object(gathered, picks)
    if rank == 0:
        torch.save(gathered, out_file)
    dist.destroy_process_group()


# rows 0, 2, 3 predicted class 0, rows 1, 4, 5 class 1; purity ranks 0 > 2 > 3 > 1 > 4 > 5
_SHARD_CASE = ([[0.9, 0.1], [0.05, 0.95], [0.9, 0.1], [0.9, 0.1], [0.05, 0.95], [0.05, 0.95]],
               [0.9, 0.5, 0.8, 0.7, 0.4, 0.3])


def test_mqnet_per_class_selection_on_a_sharded_view(tmp_path):
    """Two gloo processes, the candidates split 2 : 4: every rank picks what one process picks over
    all six rows (the quotas are over every rank's candidates)."""
    import torch.multiprocessing as mp

    alone = _mq(_SHARD_CASE[1], selection="per-class").select(_mq_view(_SHARD_CASE[0]), 4).indices.tolist()
    mp.spawn(_per_class_shard_worker, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    gathered = torch.load(tmp_path / "out.pt", weights_only=False)
    assert gathered[0] == alone and gathered[1] == alone
    predicted = torch.tensor(_SHARD_CASE[0]).argmax(1)
    assert sorted(predicted[torch.tensor(alone) - 100].tolist()) == [0, 0, 1, 1]


def test_mqnet_per_class_on_arrays_needs_the_predicted_classes():
    import mqnet_fast

    columns = dict(purity=torch.tensor([0.9, 0.8, 0.7, 0.1]), informativeness=torch.zeros(4))
    with pytest.raises(ValueError, match="needs probs .for selection 'per-class'"):
        mqnet_fast.select("mqnet", 2, options={"selection": "per-class"}, **columns)
    logits = torch.tensor([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    picks = mqnet_fast.select("mqnet", 2, options={"selection": "per-class"}, logits=logits, **columns).indices
    assert picks.tolist() == [0, 3]  # the purest of class 0, and class 1's only row


def test_mqnet_records_phi_on_the_next_query_whatever_ranked_it():
    """phi_query_rank_accuracy: the trained Phi ranking the query the purity rule chose (nan before
    Phi has learned); the rule used for a query is kept in the state until observe uses it."""
    strategy = _mq(PURITY_6)
    view = _mq_view(PROBS_6)
    record = strategy.observe(view, strategy.select(view, 2), torch.tensor([0, 3]), torch.tensor([0.8, 0.0]), seed=1)
    assert math.isnan(record["phi_query_rank_accuracy"]) and strategy.trained
    strategy.purity_next = True  # as after a round without signal: the next query ranks by purity
    selection = strategy.select(view, 2)
    assert selection.extra["meta_rule"] == "purity" and strategy.state_dict()["rule"] == "purity"
    z = torch.stack([selection.columns["purity_std"], selection.columns["informativeness_std"]], 1)
    rows, losses = torch.tensor([1, 4]), torch.tensor([0.5, 0.0])
    record = strategy.observe(view, selection, rows, losses, seed=2)
    assert record["query_rank_accuracy"] == (1.0 if z[1, 0] > z[4, 0] else 0.0)
    assert not math.isnan(record["phi_query_rank_accuracy"]) and strategy.rule is None


def test_class_quota_remainder_goes_to_the_classes_with_the_best_rows():
    from mqnet_fast.strategies.base import class_quota_query

    scores = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.5])
    classes = torch.tensor([0, 0, 2, 2, 1])
    # b = 2 over K = 3: one each for the classes whose best row scores highest (2: 0.9, 1: 0.5)
    assert sorted(class_quota_query(scores, classes, 3, 2).tolist()) == [2, 4]
    # b = 4: one each, the remaining one to class 2; a class short of rows leaves its quota to the rest
    assert sorted(class_quota_query(scores, classes, 3, 4).tolist()) == [1, 2, 3, 4]


def test_mqnet_state_from_before_the_options_loads_with_their_old_values():
    import mqnet_fast

    old = mqnet_fast.MQNet(purity="knn", informativeness="conf", meta_init="warm", meta_optimizer="momentum",
                           meta_history="last", selection="top", meta_margin=0.1)
    state = old.state_dict()
    for name in ("meta_init", "meta_optimizer", "meta_history", "selection"):
        del state["options"][name]  # as saved before these options existed
    old.load_state_dict(state)
    with pytest.raises(ValueError, match="saved with options"):
        mqnet_fast.MQNet(purity="knn", informativeness="conf").load_state_dict(state)
