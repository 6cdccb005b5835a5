"""Embeddings datasets: the loader's checks, the head, the trainer's data holder, whole experiments on
fixed embeddings, and scripts/make_embeddings.py."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mqnet_fast.data import DataError, FeatureArrays, load_dataset, load_embeddings
from mqnet_fast.experiment import ConfigError, DEFAULTS, Experiment, ExperimentConfig
from mqnet_fast.models import FeatureHead, LossPredictionModule
from mqnet_fast.strategies import STRATEGIES, strategy_class
from mqnet_fast.training import DeviceFeatures, TrainConfig, infer, make_model, model_arch, train_model
from mqnet_fast.training.loop import head_threads
from testing import strip_timing, tiny_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_embeddings.py"
CPU = torch.device("cpu")


def _script():
    spec = importlib.util.spec_from_file_location("make_embeddings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_embeddings = _script()


@pytest.fixture(scope="module")
def digits_embeddings(tmp_path_factory):
    """digits' pixels PCA (16 components) as an embeddings file."""
    path = tmp_path_factory.mktemp("emb") / "digits-pixels.npz"
    assert make_embeddings.main(["--dataset", "digits", "--encoder", "pixels", "--dim", "16", "--out", str(path)]) == 0
    return path


def _arrays(**changes):
    rng = np.random.RandomState(0)
    arrays = {"train_feats": rng.randn(12, 4), "train_labels": np.arange(12) % 3,
              "test_feats": rng.randn(5, 4).astype(np.float32), "test_labels": np.array([0, 1, 2, 0, 1], np.int32)}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def test_load_embeddings_reads_and_converts(tmp_path):
    arrays = _arrays(classes=np.array(["ant", "bee", "cat"]))
    np.savez(tmp_path / "e.npz", **arrays)
    data = load_dataset(f"embeddings:{tmp_path / 'e.npz'}")
    assert isinstance(data, FeatureArrays) and data.name == f"embeddings:{tmp_path / 'e.npz'}"
    assert data.classes == ["ant", "bee", "cat"] and data.num_classes == 3 and data.feature_dim == 4
    assert data.train_feats.dtype == np.float32 and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(data.train_feats, arrays["train_feats"].astype(np.float32))
    np.testing.assert_array_equal(data.test_labels, [0, 1, 2, 0, 1])
    np.savez(tmp_path / "plain.npz", **_arrays())
    assert load_embeddings(tmp_path / "plain.npz").classes == ["0", "1", "2"]


BAD = {
    "missing": (_arrays(test_labels=None), "array 'test_labels' is missing"),
    "feats 1-D": (_arrays(train_feats=np.zeros(12)), "array 'train_feats' must be 2-D"),
    "feats empty": (_arrays(test_feats=np.zeros((0, 4)), test_labels=np.zeros(0, np.int64)),
                    "array 'test_feats' must be 2-D .* both sizes >= 1"),
    "feats int": (_arrays(test_feats=np.zeros((5, 4), np.int64)), "array 'test_feats' must hold floats"),
    "feats NaN": (_arrays(train_feats=np.where(np.eye(12, 4) > 0, np.nan, 1.0)), "array 'train_feats' holds 4 NaN"),
    "feats Inf": (_arrays(test_feats=np.full((5, 4), np.inf, np.float32)), "array 'test_feats' holds 20 NaN or Inf"),
    "widths": (_arrays(test_feats=np.zeros((5, 3))), "array 'test_feats' has 3 features per row, 'train_feats' 4"),
    "labels float": (_arrays(train_labels=np.zeros(12)), "array 'train_labels' must be 1-D integers"),
    "labels bool": (_arrays(test_labels=np.ones(5, bool)), "array 'test_labels' must be 1-D integers"),
    "labels 2-D": (_arrays(test_labels=np.zeros((5, 1), np.int64)), "array 'test_labels' must be 1-D integers"),
    "labels length": (_arrays(test_labels=np.zeros(4, np.int64)), "array 'test_labels' has 4 labels for the 5 rows"),
    "labels negative": (_arrays(train_labels=np.arange(12) % 3 - 1), "array 'train_labels' holds negative labels"),
    "class gap": (_arrays(train_labels=np.arange(12) % 3 * 2, test_labels=np.zeros(5, np.int64)),
                  r"array 'train_labels' has no example of class\(es\) \[1, 3\] of 0..4"),
    "test class unseen": (_arrays(test_labels=np.array([0, 1, 2, 3, 0])),
                          r"array 'train_labels' has no example of class\(es\) \[3\]"),
    "one class": (_arrays(train_labels=np.zeros(12, np.int64), test_labels=np.zeros(5, np.int64)),
                  "array 'train_labels' holds one class"),
    "classes short": (_arrays(classes=np.array(["a", "b"])), "labels go up to 2 but array 'classes' names 2"),
    "classes numbers": (_arrays(classes=np.arange(3)), "array 'classes' must be 1-D strings"),
    "objects": (_arrays(train_feats=np.array([[object()] * 4] * 12)), "array 'train_feats' cannot be read without pickles"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_load_embeddings_names_the_bad_array(tmp_path, case):
    arrays, message = BAD[case]
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_embeddings(tmp_path / "e.npz")


def test_load_embeddings_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"embeddings:{tmp_path / 'missing.npz'}")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("embeddings:")
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="is not a readable .npz file"):
        load_embeddings(tmp_path / "junk.npz")
    np.save(tmp_path / "one.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match="holds a single array"):
        load_embeddings(tmp_path / "one.npy")
    with pytest.raises(DataError, match="is not a file"):
        load_embeddings(tmp_path)


def test_feature_head_by_hand():
    x = torch.tensor([[1.0, -2.0], [0.5, 1.0]])
    linear = FeatureHead(2, 2, hidden=0)
    with torch.no_grad():
        linear.linear.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        linear.linear.bias.copy_(torch.tensor([0.0, 1.0]))
    assert linear.feature_dim == 2 and linear.stage_channels == (2,)
    torch.testing.assert_close(linear(x), torch.tensor([[1.0, 0.0], [0.5, 2.5]]))
    logits, feats = linear.forward_with_features(x)
    torch.testing.assert_close(feats, x)  # penultimate = the embedding itself
    (stage,) = linear.stages(x)
    assert stage.shape == (2, 2, 1, 1) and torch.equal(linear.pool(stage), x)

    mlp = FeatureHead(2, 1, hidden=3)
    with torch.no_grad():
        mlp.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        mlp.hidden.bias.zero_()
        mlp.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        mlp.linear.bias.fill_(0.5)
    # hidden = relu([1, -2, -1]) = [1, 0, 0] and relu([0.5, 1, 1.5]); logits = h . [1, 2, 3] + 0.5
    hidden = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 1.5]])
    assert mlp.feature_dim == 3 and mlp.stage_channels == (2, 3)
    torch.testing.assert_close(mlp.features(x), hidden)
    torch.testing.assert_close(mlp(x), torch.tensor([[1.5], [7.5]]))
    stages = mlp.stages(x)
    assert [tuple(s.shape) for s in stages] == [(2, 2, 1, 1), (2, 3, 1, 1)]
    torch.testing.assert_close(mlp.pool(stages[-1]), hidden)
    assert LossPredictionModule(mlp.stage_channels)(stages).shape == (2,)
    with pytest.raises(ValueError, match="hidden >= 0"):
        FeatureHead(2, 2, hidden=-1)


def test_device_features_standardize_and_do_not_augment():
    feats = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 0.0]], np.float32)
    mean, std = DeviceFeatures.feature_stats(feats)
    torch.testing.assert_close(mean, torch.tensor([3.0, 5.0, 2.0]))
    torch.testing.assert_close(std, torch.tensor([2.0, 1.0, 2.0]))  # the constant feature gets std 1
    holder = DeviceFeatures(feats, mean, std, CPU)
    index = torch.tensor([2, 0])
    torch.testing.assert_close(holder.batch(index), torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]))
    assert torch.equal(holder.given(index), torch.from_numpy(feats[[2, 0]]))
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert torch.equal(holder.augmented_batch(index, generator), holder.batch(index))
    assert torch.equal(generator.get_state(), state)
    assert len(holder) == 3 and holder.images.shape == (3, 3) and model_arch(holder) == "head"


def test_head_trains_and_infers_on_features():
    rng = np.random.RandomState(0)
    labels = np.arange(200) % 2
    feats = rng.randn(200, 8).astype(np.float32) + labels[:, None] * 1.5
    holder = DeviceFeatures(feats, *DeviceFeatures.feature_stats(feats), CPU)
    for width, loss_module in ((0, False), (16, True)):
        model = make_model(2, 8, CPU, seed=1, width=width, arch="head", loss_module=loss_module)
        again = make_model(2, 8, CPU, seed=1, width=width, arch="head")
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
        threads = torch.get_num_threads()
        loss = train_model(model, holder, torch.arange(200), torch.from_numpy(labels), TrainConfig(200, 32, 0.1), 0,
                           show_progress=False)
        assert torch.get_num_threads() == threads  # head_threads put the setting back
        out = infer(model, holder)
        assert loss < 0.4 and float((out.logits.argmax(1).numpy() == labels).mean()) > 0.85
        assert out.feats.shape == (200, width or 8) and (out.predicted_loss is not None) == loss_module
    with pytest.raises(ValueError, match="arch must be one of"):
        make_model(2, 8, CPU, 0, arch="vit")
    before = torch.get_num_threads()
    with head_threads(FeatureHead(2, 2), CPU):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


ON_EMBEDDINGS = [name for name in STRATEGIES if not strategy_class(name).needs_images]


def tiny(dataset, **kw):
    return tiny_config(**{"dataset": dataset, "iterations": 30, "lr": 0.03, "width": 0, "encoder_epochs": None,
                          "strategies": ON_EMBEDDINGS, **kw})


_strip = strip_timing


def test_every_strategy_runs_on_embeddings(tmp_path, digits_embeddings):
    config = tiny(f"embeddings:{digits_embeddings}", purity_diagnostics=True)
    experiment = Experiment(config, tmp_path / "run")
    assert isinstance(experiment.train_images, DeviceFeatures)
    records = experiment.run()
    split = experiment.splits[0]
    assert len(records) == len(ON_EMBEDDINGS) * 3
    for name in ON_EMBEDDINGS:
        run = tmp_path / "run" / name / "seed0"
        queries = json.loads((run / "queries.json").read_text())
        flat = np.array(queries[0] + queries[1])
        assert [len(q) for q in queries] == [12, 12] and len(np.unique(flat)) == 24
        assert np.isin(flat, split.pool).all() and not np.isin(flat, split.initial_labeled).any()
        metrics = json.loads((run / "metrics.json").read_text())
        assert [m["round"] for m in metrics] == [0, 1, 2]
        for m, q in zip(metrics, queries):
            assert m["query_in"] == split.is_in[q].sum() and m["query_in"] + m["query_ood"] == 12
            assert "auroc_csi" in m and "auroc_knn" in m and "auroc_csi-full" not in m
        assert 0.0 <= metrics[2]["test_accuracy"] <= 1.0
    mq = json.loads((tmp_path / "run" / "mqnet" / "seed0" / "metrics.json").read_text())
    assert 0.0 <= mq[0]["purity_auroc"] <= 1.0 and mq[0]["meta_steps"] == 2 * 5
    # round 0 shared: by default (loss_module "all") every strategy's head carries the loss module
    assert sorted(p.name for p in (tmp_path / "run" / "round0" / "seed0").glob("*.pt")) == ["head-loss-module.pt"]
    assert len({(r["test_accuracy"], r["train_loss"]) for r in records if r["round"] == 0}) == 1


def test_csi_purity_on_embeddings_is_max_cosine_in_the_given_space(tmp_path, digits_embeddings):
    config = tiny(f"embeddings:{digits_embeddings}", strategies=["mqnet"], rounds=1,
                  options={"informativeness": "conf"})
    experiment = Experiment(config, tmp_path / "run")
    experiment.run()
    scores = np.load(tmp_path / "run" / "mqnet" / "seed0" / "scores" / "round_000.npz")
    data, split = experiment.data, experiment.splits[0]
    labeled_in = split.initial_labeled[split.is_in[split.initial_labeled]]
    unit = data.train_feats / np.linalg.norm(data.train_feats, axis=1, keepdims=True)
    expected = (unit[scores["candidates"]] @ unit[labeled_in].T).max(1)
    np.testing.assert_allclose(scores["purity"], expected, rtol=1e-5, atol=1e-6)


def test_resume_on_embeddings_gives_the_same_results(tmp_path, digits_embeddings):
    config = tiny(f"embeddings:{digits_embeddings}", strategies=["mqnet", "badge", "ll"], rounds=3, width=8)
    whole = Experiment(config, tmp_path / "whole").run()
    Experiment(config, tmp_path / "cut").run(stop_after_rounds=2)
    resumed = Experiment(config, tmp_path / "cut").run()
    assert _strip(resumed) == _strip(whole)
    for name in ("mqnet", "badge", "ll"):
        assert (json.loads((tmp_path / "whole" / name / "seed0" / "queries.json").read_text())
                == json.loads((tmp_path / "cut" / name / "seed0" / "queries.json").read_text()))
    # a strategy added in a later process starts from the saved round-0 head of its recipe
    later = Experiment(tiny(config.dataset, strategies=["random"], rounds=3, width=8), tmp_path / "cut").run()
    first_badge = next(r for r in whole if r["strategy"] == "badge" and r["round"] == 0)
    assert (later[0]["test_accuracy"], later[0]["train_loss"]) == (first_badge["test_accuracy"],
                                                                   first_badge["train_loss"])


def test_embeddings_config(tmp_path, digits_embeddings):
    dataset = f"embeddings:{digits_embeddings}"
    resolved = ExperimentConfig(dataset=dataset).resolved()
    assert {k: getattr(resolved, k) for k in DEFAULTS["embeddings"]} == DEFAULTS["embeddings"]
    assert resolved.encoder_epochs is None and resolved.identity()["encoder_epochs"] is None
    assert ExperimentConfig(dataset=dataset, width=0).resolved().width == 0
    with pytest.raises(ConfigError, match="width must be an integer >= 0"):
        ExperimentConfig(dataset=dataset, width=-1).resolved()
    with pytest.raises(ConfigError, match="width must be an integer >= 1"):
        ExperimentConfig(dataset="digits", width=0).resolved()
    with pytest.raises(ConfigError, match="purity 'csi-full' needs the pool's images"):
        ExperimentConfig(dataset=dataset, options={"purity": "csi-full"}).resolved()
    with pytest.raises(ConfigError, match="encoder_epochs: .* fixed embeddings"):
        ExperimentConfig(dataset=dataset, encoder_epochs=3).resolved()
    with pytest.raises(ConfigError, match="strategy 'ccal' trains contrastive encoders on the pool's images"):
        ExperimentConfig(dataset=dataset, strategies=["ccal"]).resolved()
    from mqnet_fast.data import load_digits

    with pytest.raises(ConfigError, match="not the same kind"):
        Experiment(tiny("digits", strategies=["random"], width=16), tmp_path / "a", data=load_embeddings(digits_embeddings))
    with pytest.raises(ConfigError, match="not the same kind"):
        Experiment(tiny(dataset, strategies=["random"]), tmp_path / "b", data=load_digits())


# --------------------------------------------------------------------------------------------------
# scripts/make_embeddings.py


def test_make_embeddings_pixels(tmp_path, digits_embeddings):
    data = load_embeddings(digits_embeddings)
    assert data.train_feats.shape == (1198, 16) and data.test_feats.shape == (599, 16)
    assert data.classes == [str(c) for c in range(10)]
    meta = json.loads(str(np.load(digits_embeddings)["meta"]))
    assert meta["encoder"] == "pixels" and meta["dim"] == 16 and 0.5 < meta["explained_variance"] < 1.0
    # principal components: centred, uncorrelated, in decreasing variance
    covariance = np.cov(data.train_feats.astype(np.float64), rowvar=False)
    assert np.abs(data.train_feats.mean(0)).max() < 1e-4
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 1e-4 * covariance[0, 0]
    assert (np.diff(np.diag(covariance)) <= 1e-9).all()
    out = tmp_path / "again.npz"
    assert make_embeddings.main(["--dataset", "digits", "--dim", "16", "--out", str(out)]) == 0
    np.testing.assert_array_equal(load_embeddings(out).train_feats, data.train_feats)  # deterministic


def test_make_embeddings_csi_and_weights(tmp_path, capsys):
    import torchvision

    out = tmp_path / "csi.npz"
    assert make_embeddings.main(["--dataset", "digits", "--encoder", "csi", "--epochs", "1", "--width", "4",
                                 "--fit-subset", "64", "--quiet", "--out", str(out)]) == 0
    data = load_embeddings(out)
    assert data.train_feats.shape == (1198, 32) and data.test_feats.shape == (599, 32)  # 8 x width
    meta = json.loads(str(np.load(out)["meta"]))
    assert meta["encoder"] == "csi" and meta["fit_rows"] == 64 and meta["steps"] == 2 and meta["layer"] == "penultimate"
    assert meta["config"]["epochs"] == 1 and meta["config"]["warmup_epochs"] == 1 and meta["config"]["width"] == 4

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "r18.npz"
    assert make_embeddings.main(["--dataset", "digits", "--weights", str(tmp_path / "r18.pth"), "--resize", "16",
                                 "--out", str(out)]) == 0
    data = load_embeddings(out)
    assert data.train_feats.shape == (1198, 512) and json.loads(str(np.load(out)["meta"]))["encoder"] == "weights"

    assert make_embeddings.main(["--dataset", "digits", "--weights", str(tmp_path / "none.pth"),
                                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    assert make_embeddings.main(["--dataset", "digits", "--weights", str(tmp_path / "bad.pth"),
                                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "no 'fc.weight'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
