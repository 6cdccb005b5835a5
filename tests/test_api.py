"""The loop-free API: mqnet_fast.select on arrays, the stateful mqnet_fast.MQNet, `mqnet-fast select`,
`--version` and `info`."""
import io
import csv

import numpy as np
import pytest
import torch

import mqnet_fast
from mqnet_fast.cli import main
from mqnet_fast.strategies import STRATEGIES, strategy_class


def _arrays(seed=0, n=60, k=3, d=5, labeled=8):
    g = torch.Generator().manual_seed(seed)
    return dict(logits=torch.randn(n, k, generator=g) * 2, feats=torch.randn(n, d, generator=g),
                labeled_feats=torch.randn(labeled, d, generator=g),
                labeled_is_in=torch.arange(labeled) % 3 != 0, informativeness=torch.rand(n, generator=g),
                labeled_probs=torch.softmax(torch.randn(labeled, k, generator=g), 1))


def _options(name):
    return {"purity": "knn", "informativeness": "conf"} if name == "mqnet" else {}


ON_ARRAYS = [name for name in STRATEGIES if strategy_class(name).inputs is not None]


def test_strategies_that_train_a_detector_are_refused_on_arrays():
    for name in sorted(set(STRATEGIES) - set(ON_ARRAYS)):
        with pytest.raises(ValueError, match=f"'{name}' does not run on arrays alone"):
            mqnet_fast.select(name, 3, **_arrays())


@pytest.mark.parametrize("name", ON_ARRAYS)
def test_every_strategy_runs_on_arrays_with_numpy_or_torch(name):
    arrays = _arrays()
    a = mqnet_fast.select(name, 7, options=_options(name), **arrays)
    b = mqnet_fast.select(name, 7, options=_options(name), **{k: v.numpy() for k, v in arrays.items()})
    assert torch.equal(a.indices, b.indices)
    assert a.indices.shape == (7,) and len(set(a.indices.tolist())) == 7
    assert int(a.indices.min()) >= 0 and int(a.indices.max()) < 60
    if a.scores is not None:
        assert a.scores.shape == (60,)
        # higher = preferred: no candidate left out scores above the last pick
        unpicked = torch.ones(60, dtype=torch.bool)
        unpicked[a.indices] = False
        assert float(a.scores[unpicked].max()) <= float(a.scores[a.indices].min())


def test_hand_worked_cases_and_logits_equal_their_softmax():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.8, 0.2]])
    assert mqnet_fast.select("conf", 2, probs=probs).indices.tolist() == [1, 2]
    logits = torch.log(torch.tensor(probs)) + 3.0
    assert mqnet_fast.select("margin", 2, logits=logits).indices.tolist() == [1, 2]
    feats = np.array([[1.0, 0.0], [5.0, 0.0], [2.0, 0.0], [5.0, 1.0]], np.float32)
    picks = mqnet_fast.select("coreset", 3, feats=feats, labeled_feats=np.zeros((1, 2), np.float32))
    assert picks.indices.tolist() == [3, 2, 0]
    # MQ-Net on precomputed columns: z_P + z_I of P = 0 1 2 3, I = .1 .5 .4 .2 ranks rows 2, 1
    mq = mqnet_fast.select("mqnet", 2, purity=np.arange(4.0), informativeness=np.array([0.1, 0.5, 0.4, 0.2]),
                           options={"selection": "top"})  # per-class (the default) needs the predicted classes
    assert mq.indices.tolist() == [2, 1]
    assert mqnet_fast.select("ll", 2, informativeness=np.array([0.1, 0.5, 0.4, 0.2])).indices.tolist() == [1, 2]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: mqnet_fast.select("conf", 2, feats=np.zeros((4, 2))), ValueError, "'conf' needs probs"),
    (lambda: mqnet_fast.select("coreset", 2, feats=np.zeros((4, 2))), ValueError, "needs labeled_feats"),
    (lambda: mqnet_fast.select("mqnet", 2, probs=np.full((4, 2), 0.5)), ValueError,
     "needs purity \\(purity 'csi' is not computed from arrays.*knn"),
    (lambda: mqnet_fast.select("mqnet", 2, probs=np.full((4, 2), 0.5), options={"purity": "knn",
                                                                          "informativeness": "conf"}),
     ValueError, "feats \\(for purity 'knn'\\)"),
    (lambda: mqnet_fast.select("conf", 2, probs=np.full((4, 2), 0.5), feats=np.zeros((5, 2))), ValueError,
     "disagree on the number of candidates"),
    (lambda: mqnet_fast.select("conf", 2, probs=[[0.5, 0.5]]), TypeError, "probs must be a torch.Tensor or a numpy"),
    (lambda: mqnet_fast.select("conf", 2, prob=np.full((4, 2), 0.5)), TypeError, "unexpected keyword argument .prob."),
    (lambda: mqnet_fast.select("conf", 9, probs=np.full((4, 2), 0.5)), ValueError, "exceeds the 4 candidates"),
    (lambda: mqnet_fast.select("conf", 1, probs=np.full((4, 2), 0.5), logits=np.zeros((4, 2))), ValueError,
     "probs or logits, not both"),
    (lambda: mqnet_fast.select("conf", 1, probs=np.array([[np.nan, 0.5]])), ValueError, "probs holds 1 NaN"),
    (lambda: mqnet_fast.select("coreset", 1, feats=np.zeros((4, 2)), labeled_feats=np.zeros((1, 3))), ValueError,
     "labeled_feats has 3 columns, feats 2"),
    (lambda: mqnet_fast.select("mqnet", 1, feats=np.zeros((4, 2)), labeled_feats=np.zeros((2, 2)),
                               labeled_is_in=np.array([1, 2])), TypeError, "labeled_is_in must be bool"),
    (lambda: mqnet_fast.select("nope", 1, probs=np.full((4, 2), 0.5)), ValueError, "unknown strategy 'nope'"),
    (lambda: mqnet_fast.select("conf", 1, probs=np.full((4, 2), 0.5), generator=3), TypeError,
     "generator must be a torch.Generator"),
])
def test_bad_inputs_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _oracle(indices, n=60, k=3):
    truth_in = (torch.arange(n) % 2 == 0)
    truth_label = torch.arange(n) % k
    return truth_in[indices], torch.where(truth_in[indices], truth_label[indices], torch.full_like(indices, -1))


def test_stateful_mqnet_learns_saves_and_resumes(tmp_path):
    arrays = _arrays()
    inputs = {k: v for k, v in arrays.items() if k != "informativeness"}
    mq = mqnet_fast.MQNet(purity="knn", informativeness="conf", meta_epochs=2, meta_min_steps=5)
    with pytest.raises(RuntimeError, match="needs a select"):
        mq.observe(torch.arange(3), losses=torch.ones(3))
    first = mq.select(10, **inputs)
    is_in, labels = _oracle(first.indices)
    record = mq.observe(first.indices, is_in=is_in, labels=labels)
    assert mq.trained and record["meta_steps"] == 10

    # the losses computed from is_in and labels are the masked cross-entropy of the logits given
    probs = torch.softmax(arrays["logits"], 1)[first.indices]
    losses = torch.where(is_in, -torch.log(probs[torch.arange(10), labels.clamp_min(0)]), torch.zeros(10))
    twin = mqnet_fast.MQNet(purity="knn", informativeness="conf", meta_epochs=2, meta_min_steps=5)
    twin.select(10, **inputs)
    twin.observe(first.indices, losses=losses)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(twin.strategy.model.weights, mq.strategy.model.weights))

    torch.save(mq.state_dict(), tmp_path / "mq.pt")
    resumed = mqnet_fast.MQNet(purity="knn", informativeness="conf", meta_epochs=2, meta_min_steps=5)
    resumed.load_state_dict(torch.load(tmp_path / "mq.pt", weights_only=True))
    second = _arrays(seed=1)
    second = {k: v for k, v in second.items() if k != "informativeness"}
    assert torch.equal(resumed.select(10, **second).indices, mq.select(10, **second).indices)
    with pytest.raises(ValueError, match="saved with options"):
        mqnet_fast.MQNet(purity="knn", informativeness="entropy").load_state_dict(mq.state_dict())


def test_stateful_mqnet_without_ranking_signal_stays_untrained():
    mq = mqnet_fast.MQNet(purity="knn", informativeness="conf", meta_epochs=2, meta_min_steps=5)
    sel = mq.select(4, **{k: v for k, v in _arrays().items() if k != "informativeness"})
    record = mq.observe(sel.indices, is_in=torch.zeros(4, dtype=torch.bool), labels=torch.full((4,), -1))
    assert not mq.trained and record["meta_steps"] == 0
    with pytest.raises(ValueError, match="labels of IN rows must be classes in \\[0, 3\\)"):
        mq.observe(sel.indices, is_in=torch.ones(4, dtype=torch.bool), labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="losses must have shape \\(4,\\)"):
        mq.observe(sel.indices, losses=torch.ones(3))


def _npz(tmp_path, **extra):
    arrays = _arrays()
    path = tmp_path / "emb.npz"
    labeled = np.array([3, 10, 11, 40])
    np.savez(path, feats=arrays["feats"].numpy(), logits=arrays["logits"].numpy(), labeled=labeled,
             labeled_is_in=np.array([True, False, True, True]), **extra)
    return path, arrays, labeled


def _picks(path):
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [int(r["index"]) for r in rows], [float(r["score"]) for r in rows]


@pytest.mark.parametrize("name", ["coreset", "badge", "conf"])
def test_cli_select_writes_picks_in_order(tmp_path, name):
    path, arrays, labeled = _npz(tmp_path)
    out = tmp_path / "picks.csv"
    assert main(["select", "--embeddings", str(path), "--strategy", name, "--budget", "6", "--out", str(out)]) == 0
    index, score = _picks(out)
    candidates = np.setdiff1d(np.arange(60), labeled)
    expected = mqnet_fast.select(name, 6, logits=arrays["logits"][candidates], feats=arrays["feats"][candidates],
                                 labeled_feats=arrays["feats"][labeled], generator=torch.Generator().manual_seed(0))
    assert index == candidates[expected.indices.numpy()].tolist()
    assert not set(index) & set(labeled.tolist())
    if expected.scores is not None:
        assert np.allclose(score, expected.scores[expected.indices].numpy())


def test_cli_select_mqnet_with_options(tmp_path):
    path, _, _ = _npz(tmp_path)
    out = tmp_path / "picks.csv"
    assert main(["select", "--embeddings", str(path), "--strategy", "mqnet", "--budget", "5", "--out", str(out),
                 "--purity", "knn", "--informativeness", "margin"]) == 0
    assert len(_picks(out)[0]) == 5


def test_version_and_info(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0 and mqnet_fast.__version__ in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "extension built for:" in out and "backend cpp" in out and "strategies: random" in out


@pytest.mark.cuda
@pytest.mark.parametrize("name", STRATEGIES)
def test_same_features_give_the_same_picks_on_a_gpu(name):
    """Training on a GPU is not bit-for-bit repeatable, selection is: the same arrays on the GPU pick
    what they pick on the CPU (float64, where every backend's picks are exact)."""
    arrays = {k: v.double() if v.is_floating_point() else v for k, v in _arrays().items()}
    cpu = mqnet_fast.select(name, 9, options=_options(name), generator=torch.Generator().manual_seed(3), **arrays)
    gpu = mqnet_fast.select(name, 9, options=_options(name), generator=torch.Generator().manual_seed(3),
                            **{k: v.cuda() for k, v in arrays.items()})
    assert torch.equal(cpu.indices.cpu(), gpu.indices.cpu())


def test_observe_takes_lists_and_refuses_repeated_rows():
    mq = mqnet_fast.MQNet(purity="knn", informativeness="conf", meta_epochs=1, meta_min_steps=2)
    mq.select(4, **{k: v for k, v in _arrays().items() if k != "informativeness"})
    assert mq.observe([0, 1, 2], is_in=[1, 0, 1], labels=[0, -1, 2])["meta_steps"] == 2
    with pytest.raises(ValueError, match="indices lists a row twice"):
        mq.observe([0, 0], losses=[1.0, 2.0])


@pytest.mark.cuda
def test_inputs_on_different_devices_meet_on_the_candidates_device():
    arrays = _arrays()
    mixed = dict(arrays, logits=arrays["logits"].cuda(), feats=arrays["feats"].cuda())
    for name in ("badge", "coreset", "mqnet"):
        a = mqnet_fast.select(name, 5, options=_options(name), **arrays)
        b = mqnet_fast.select(name, 5, options=_options(name), **{k: v.numpy() if k == "labeled_feats" else v
                                                                  for k, v in mixed.items()})
        assert len(b.indices) == 5 and b.indices.device.type in ("cpu", "cuda")
        assert a.indices.shape == b.indices.shape
