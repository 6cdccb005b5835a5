"""Each strategy's contract: `budget` distinct unlabeled candidates, reproducible for a seed."""
import numpy as np
import pytest
import torch

from mqnet_fast.scores import entropy, informativeness, knn_purity, least_confidence, negative_margin
from mqnet_fast.strategies import STRATEGIES, RoundView, make_strategy, strategy_class
from mqnet_fast.training import DeviceFeatures, TrainConfig, make_model


def _state(seed=0, n=257, k=4, d=33, labeled=19):
    """A round's view; with a target model (a linear head), its TrainConfig and the pool as fixed
    embeddings (5,000 rows), so the strategies that train a detector run on it too."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.rand(5000, d, generator=g)
    rng = np.random.RandomState(seed)
    rows = rng.choice(5000, n + labeled, replace=False)
    candidates, labeled_rows = torch.from_numpy(np.sort(rows[:n])), torch.from_numpy(np.sort(rows[n:]))
    probs = torch.softmax(torch.randn(n, k, generator=g) * 2, 1)
    predicted_loss = torch.rand(n, generator=g)  # what a target model with the loss module gives (ll)
    is_in = torch.arange(labeled) < labeled // 2
    labels = torch.where(is_in, torch.arange(labeled) % k, torch.full((labeled,), -1))
    images = DeviceFeatures(pool.numpy(), torch.zeros(d), torch.ones(d), torch.device("cpu"))
    model = make_model(k, d, torch.device("cpu"), seed, arch="head", width=0).eval()
    return RoundView(candidates, probs, pool[candidates], torch.Generator().manual_seed(seed + 1),
                     labeled_feats=pool[labeled_rows], labeled_is_in=is_in,
                     labeled_probs=torch.softmax(torch.randn(labeled, k, generator=g) * 2, 1),
                     labeled=labeled_rows, labeled_labels=labels, model=model, images=images,
                     train_config=TrainConfig(iterations=5, batch_size=8, lr=0.05),
                     extras={"predicted_loss": predicted_loss})


def _make(name):
    """Strategies that run on the view alone: MQ-Net with scores of the target model's outputs (the
    CSI purity needs the pool's images and the run cache; tests/test_contrastive.py covers it)."""
    return make_strategy(name, purity="knn", informativeness="conf") if name == "mqnet" else make_strategy(name)


# CCAL trains contrastive encoders on the pool's images: tests/test_ccal.py holds its contract
ON_A_VIEW = [name for name in STRATEGIES if not strategy_class(name).needs_images]


@pytest.mark.parametrize("name", ON_A_VIEW)
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


def _view(probs, feats=None, labeled_feats=None, labeled_is_in=None):
    probs = torch.tensor(probs)
    feats = torch.zeros(len(probs), 1) if feats is None else torch.tensor(feats)
    return RoundView(torch.arange(100, 100 + len(probs)), probs, feats, torch.Generator().manual_seed(0),
                     labeled_feats=None if labeled_feats is None else torch.tensor(labeled_feats),
                     labeled_is_in=None if labeled_is_in is None else torch.tensor(labeled_is_in))


def test_uncertainty_strategies_on_a_hand_worked_case():
    # least confidence 1 - max p: .5 .6 .2 .55; entropy: .693 1.089 .639 1.011; margin -(p1 - p2): 0 -.1 -.7 -.05
    view = _view([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1], [0.45, 0.4, 0.15]])
    for name, expected in (("conf", [1, 3]), ("entropy", [1, 3]), ("margin", [0, 3])):
        selection = make_strategy(name).select(view, 2)
        assert selection.indices.tolist() == [100 + i for i in expected], name
    assert torch.allclose(make_strategy("conf").select(view, 1).scores, torch.tensor([0.5, 0.6, 0.2, 0.55]))


def test_coreset_on_a_hand_worked_case():
    # labeled center (0, 0); candidates (1, 0) (5, 0) (2, 0) (5, 1): farthest first is (5, 1) at
    # sqrt(26), then (2, 0) at 2, then (1, 0) and (5, 0) both at 1: the tie goes to the lower row.
    view = _view([[1.0]] * 4, feats=[[1.0, 0.0], [5.0, 0.0], [2.0, 0.0], [5.0, 1.0]], labeled_feats=[[0.0, 0.0]],
                 labeled_is_in=[True])
    selection = make_strategy("coreset").select(view, 3)
    assert selection.indices.tolist() == [103, 102, 100]
    # each pick scores the radius that ranked it; the unpicked (5, 0) its final distance 1
    assert torch.allclose(selection.scores, torch.tensor([1.0, 1.0, 2.0, 26.0 ** 0.5]))
    assert selection.extra["coreset_final_radius"] == 1.0


def _coreset_case():
    # labeled OOD (10, 0), labeled IN (0, 0); candidates (9, 0) (4, 0) (0, 1). With every labeled
    # example a center the distances are 1, 4, 1: (4, 0) first, then (9, 0) and (0, 1) both at 1, the
    # tie to the lower row. With the IN one alone they are 9, 4, 1: (9, 0) first, then (4, 0) at
    # min(4, 5) = 4. The labeled OOD example next to (9, 0) is what keeps it from being picked first.
    feats = [[9.0, 0.0], [4.0, 0.0], [0.0, 1.0]]
    return _view([[1.0]] * 3, feats=feats, labeled_feats=[[10.0, 0.0], [0.0, 0.0]], labeled_is_in=[False, True])


CORESET_PICKS = {"all": ([101, 100], [1.0, 4.0, 1.0]), "in": ([100, 101], [9.0, 4.0, 1.0])}


@pytest.mark.parametrize("centers", ["all", "in"])
def test_coreset_centers_on_a_hand_worked_case(centers):
    picks, scores = CORESET_PICKS[centers]
    selection = make_strategy("coreset", coreset_centers=centers).select(_coreset_case(), 2)
    assert selection.indices.tolist() == picks
    assert torch.allclose(selection.scores, torch.tensor(scores))


def test_coreset_centers_is_checked_and_needs_the_flags():
    import mqnet_fast

    with pytest.raises(ValueError, match="coreset_centers.*'ood'"):
        make_strategy("coreset", coreset_centers="ood")
    arrays = dict(feats=np.zeros((3, 2)), labeled_feats=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="labeled_is_in"):  # else every labeled example would count as OOD
        mqnet_fast.select("coreset", 1, options={"coreset_centers": "in"}, **arrays)
    assert mqnet_fast.select("coreset", 1, **arrays).indices.shape == (1,)


def _coreset_shard_worker(rank, init_file, out_file):
    import datetime

    import torch.distributed as dist

    from mqnet_fast.world import World
    from mqnet_fast.strategies.base import Shard

    torch.set_num_threads(1)
    # ranks that disagree on the centers would wait on each other: a timeout turns that into a failure
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    whole = _coreset_case()
    offsets = [0, 1, 3]  # rank 0 holds candidate 0, rank 1 candidates 1 and 2
    rows = slice(offsets[rank], offsets[rank + 1])
    results = {}
    for centers in CORESET_PICKS:
        view = RoundView(whole.candidates[rows], whole.probs[rows], whole.feats[rows], torch.Generator(),
                         labeled_feats=whole.labeled_feats, labeled_is_in=whole.labeled_is_in,
                         shard=Shard(World(), offsets, whole.candidates))
        selection = make_strategy("coreset", coreset_centers=centers).select(view, 2)
        results[centers] = (selection.indices.tolist(), selection.scores.tolist())
    gathered = [None, None]
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, out_file)
    dist.destroy_process_group()


def test_coreset_centers_on_a_sharded_view(tmp_path):
    """Two gloo processes: the picks of the single-process case on both ranks, each rank's scores
    its rows of the single-process scores."""
    import torch.multiprocessing as mp

    mp.spawn(_coreset_shard_worker, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    gathered = torch.load(tmp_path / "out.pt", weights_only=False)
    for centers, (picks, scores) in CORESET_PICKS.items():
        for rank in range(2):
            assert gathered[rank][centers][0] == picks, (centers, rank)
        assert gathered[0][centers][1] + gathered[1][centers][1] == pytest.approx(scores), centers


def _mqnet_view():
    # P = 0 1 2 3 (given), I = least confidence .1 .5 .4 .2. z-scores (sample std): z_P = -1.162 -.387
    # .387 1.162, z_I = -1.095 1.095 .548 -.548. Sum: -2.257 .708 .935 .614 -> rows 2, 1. With exp:
    # .647 3.67 3.20 3.77 -> rows 3, 1. P alone would take 3, 2 and I alone 1, 2.
    return _view([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.8, 0.2]])


@pytest.mark.parametrize("standardize, expected", [("zscore", [102, 101]), ("exp-zscore", [103, 101])])
def test_mqnet_first_round_on_a_hand_worked_case(standardize, expected):
    strategy = make_strategy("mqnet", informativeness="conf", standardize=standardize)
    strategy.purity_fn = lambda view: torch.tensor([0.0, 1.0, 2.0, 3.0])
    selection = strategy.select(_mqnet_view(), 2)
    assert selection.indices.tolist() == expected
    z = torch.tensor([[-1.16190, -1.09545], [-0.38730, 1.09545], [0.38730, 0.54772], [1.16190, -0.54772]])
    z = z.exp() if standardize == "exp-zscore" else z
    assert torch.allclose(selection.columns["purity_std"], z[:, 0], atol=1e-4)
    assert torch.allclose(selection.columns["informativeness_std"], z[:, 1], atol=1e-4)


def _observed(losses, selection_change=None, **kw):
    strategy = make_strategy("mqnet", informativeness="conf", meta_epochs=2, meta_min_steps=5)
    strategy.purity_fn = lambda view: torch.tensor([0.0, 1.0, 2.0, 3.0])
    view = _mqnet_view()
    selection = strategy.select(view, 4)
    if selection_change is not None:
        selection = selection_change(selection)
    record = strategy.observe(view, selection, torch.arange(len(losses)), torch.tensor(losses), seed=0, **kw)
    return strategy, record


def test_mqnet_phi_counts_as_trained_only_after_ranking_signal():
    for losses in ([0.0, 0.0, 0.0, 0.0], [1.5], [0.7, 0.7]):  # all OOD, one example, all tied
        strategy, record = _observed(losses)
        assert not strategy.trained and record["meta_steps"] == 0, losses
    strategy, record = _observed([0.0, 1.2, 0.3, 0.0])
    assert strategy.trained and record["meta_steps"] == 2 * 5


def test_mqnet_learns_on_the_meta_inputs_its_selection_scored():
    from mqnet_fast.strategies import Selection

    def flipped(selection):
        columns = dict(selection.columns, purity_std=-selection.columns["purity_std"])
        return Selection(selection.indices, selection.scores, columns=columns)

    losses = [0.0, 1.2, 0.3, 0.0]
    plain, _ = _observed(losses)
    changed, _ = _observed(losses, flipped)
    recomputed, _ = _observed(losses, lambda s: Selection(s.indices, s.scores))  # no columns: from the view
    weights = lambda s: torch.cat([w.flatten() for w in s.model.weights])
    assert not torch.equal(weights(plain), weights(changed))
    assert torch.equal(weights(plain), weights(recomputed))


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
