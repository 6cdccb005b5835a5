"""The cross-dataset setup: IN from one image dataset, OOD from another, converted to the IN images'
size and channels, with the split-dataset setup's noise arithmetic."""
import json

import numpy as np
import pytest

from mqnet_fast.data import DataError, ImageArrays, convert_images, load_digits, with_ood_dataset
from mqnet_fast.experiment.split import make_open_set, num_ood_for
from mqnet_fast.experiment import ConfigError, Experiment, ExperimentConfig
from testing import tiny_config


def _grey(values) -> np.ndarray:
    v = np.asarray(values, np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def test_convert_shrinks_by_area_and_takes_luma():
    image = np.zeros((1, 2, 4, 3), np.uint8)
    image[0, :, :2] = _grey([[10, 20], [30, 40]])  # block mean 25
    image[0, :, 2:] = _grey([[0, 0], [0, 255]])  # block mean 63.75
    out = convert_images(image, (1, 2), 1)
    assert out.shape == (1, 1, 2, 1) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [25, 64]
    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert convert_images(red, (1, 1), 1).item() == 76  # 0.299 * 255 = 76.245
    assert convert_images(red, (2, 2), 1)[0, :, :, 0].tolist() == [[76, 76], [76, 76]]  # same size: luma only


def test_convert_grows_bilinearly_and_repeats_channels():
    image = np.array([0, 100], np.uint8).reshape(1, 1, 2, 1)
    out = convert_images(image, (2, 4), 3)
    assert out.shape == (1, 2, 4, 3)
    # source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped at the edges
    for row in range(2):
        for channel in range(3):
            assert out[0, row, :, channel].tolist() == [0, 25, 75, 100]
    same = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(convert_images(same, (2, 2), 3), same)


def test_convert_mixes_shrinking_and_growing():
    image = np.array([[10, 30], [50, 70]], np.uint8).reshape(1, 2, 2, 1)
    out = convert_images(image, (1, 4), 1)  # rows averaged (30, 50), then each row grown
    assert out[0, 0, :, 0].tolist() == [30, 35, 45, 50]


def test_convert_refuses_bad_input():
    with pytest.raises(DataError, match="uint8"):
        convert_images(np.zeros((1, 2, 2, 3), np.float32), (2, 2), 3)
    with pytest.raises(DataError, match="channels"):
        convert_images(np.zeros((1, 2, 2, 3), np.uint8), (2, 2), 2)


def _arrays(name, n_classes, shape, n_per_class, seed, flip=True):
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return ImageArrays(name, [f"c{i}" for i in range(n_classes)], rng.randint(0, 256, (len(labels),) + shape, dtype=np.uint8),
                       labels, rng.randint(0, 256, (len(labels),) + shape, dtype=np.uint8), labels[::-1].copy(), flip=flip)


def test_with_ood_dataset_joins_and_converts():
    a = _arrays("a", 3, (4, 4, 1), 5, 0, flip=False)
    b = _arrays("b", 2, (8, 8, 3), 4, 1)
    joined = with_ood_dataset(a, b)
    assert joined.classes == ["c0", "c1", "c2", "ood:c0", "ood:c1"] and joined.in_classes == [0, 1, 2]
    assert joined.name == "a+ood:b" and joined.flip is False and joined.image_shape == (4, 4, 1)
    for split in ("train", "test"):
        images, labels = getattr(joined, f"{split}_images"), getattr(joined, f"{split}_labels")
        np.testing.assert_array_equal(images[:15], getattr(a, f"{split}_images"))
        np.testing.assert_array_equal(images[15:], convert_images(getattr(b, f"{split}_images"), (4, 4), 1))
        np.testing.assert_array_equal(labels, np.concatenate([getattr(a, f"{split}_labels"),
                                                              getattr(b, f"{split}_labels") + 3]))
    with pytest.raises(DataError, match="two image datasets"):
        from mqnet_fast.data import FeatureArrays

        with_ood_dataset(a, FeatureArrays("embeddings:x", ["0", "1"], np.zeros((2, 3), np.float32),
                                          np.array([0, 1]), np.zeros((2, 3), np.float32), np.array([0, 1])))


def test_open_set_with_fixed_in_classes():
    labels = np.repeat(np.arange(5), 20)  # classes 0..2 IN (60 examples), 3..4 OOD (40)
    split = make_open_set(labels, 5, 3, 0.4, 10, seed=7, in_classes=[2, 0, 1])
    assert split.in_classes == [0, 1, 2] and split.num_in_pool == 60 and split.num_ood_pool == num_ood_for(60, 0.4)
    assert split.is_in[split.pool].sum() == 60
    short = make_open_set(labels, 5, 3, 0.6, 10, seed=7, in_classes=[0, 1, 2])  # needs 90 OOD of 40: IN cut
    assert short.num_ood_pool <= 40 and abs(short.num_ood_pool / len(short.pool) - 0.6) < 0.02 and short.notes
    for bad in ([0, 1], [0, 0, 1], [0, 1, 5]):
        with pytest.raises(ValueError, match="in_classes"):
            make_open_set(labels, 5, 3, 0.4, 10, seed=7, in_classes=bad)


def test_config_refusals():
    for kw, match in ((dict(ood_dataset="digits"), "is the IN dataset itself"),
                      (dict(ood_dataset="embeddings:x.npz"), "fixed embeddings"),
                      (dict(dataset="embeddings:x.npz", ood_dataset="digits"), "fixed embeddings"),
                      (dict(ood_dataset="cifar10", split="2:8"), "no split to give"),
                      (dict(ood_dataset=""), "dataset name")):
        with pytest.raises(ConfigError, match=match):
            ExperimentConfig(**kw).resolved()


def _run(tmp_path, data, ood, **kw):
    config = tiny_config(strategies=["random", "conf"], rounds=1, ood_dataset=ood, **kw)
    experiment = Experiment(config, tmp_path / "run", data=data)
    records = experiment.run()
    identity = json.loads((tmp_path / "run" / "experiment.json").read_text())
    return experiment, records, identity


def test_digits_in_cifar10_ood(tmp_path, shared_cifar10):
    from conftest import SHARED_CIFAR10

    ood = f"imagefolder:{SHARED_CIFAR10}"
    experiment, records, identity = _run(tmp_path, None, ood)
    digits = load_digits()
    data = experiment.data
    assert data.image_shape == (8, 8, 1) and data.num_classes == 20 and experiment.num_in == 10
    np.testing.assert_array_equal(data.train_images[len(digits.train_labels):][:100],
                                  convert_images(shared_cifar10.train_images[:100], (8, 8), 1))
    split = experiment.splits[0]
    assert split.in_classes == list(range(10))
    assert split.num_in_pool == len(digits.train_labels) and split.num_ood_pool == num_ood_for(split.num_in_pool, 0.6)
    pool_labels = data.train_labels[split.pool]
    assert (pool_labels[split.is_in[split.pool]] < 10).all() and (pool_labels[~split.is_in[split.pool]] >= 10).all()
    assert identity["ood_dataset"] == ood and len(records) == 4
    assert all(r["ood_dataset"] == ood and r["split"] is None for r in records)
    assert all(r["labeled_in"] + r["labeled_ood"] == 12 * (r["round"] + 1) for r in records)
    # the same dataset with another OOD dataset is another experiment
    with pytest.raises(ConfigError, match="ood_dataset"):
        Experiment(tiny_config(strategies=["random"], rounds=1), tmp_path / "run")


def test_cifar10_in_digits_ood(tmp_path, shared_cifar10):
    from conftest import SHARED_CIFAR10

    experiment, records, _ = _run(tmp_path, shared_cifar10, "digits", dataset=f"imagefolder:{SHARED_CIFAR10}",
                                  width=4, iterations=1)
    data, split = experiment.data, experiment.splits[0]
    assert data.image_shape == (32, 32, 3) and data.classes[10:] == [f"ood:{c}" for c in range(10)]
    ood_train = data.train_images[50000:]
    assert (ood_train[..., 0] == ood_train[..., 2]).all()  # grey digits as RGB
    # 1,198 digits cannot make 60% of a pool holding all 50,000 IN images: the IN side is cut
    assert split.num_ood_pool <= 1198 and split.notes and abs(split.num_ood_pool / len(split.pool) - 0.6) < 0.001
    assert len(records) == 4 and all(np.isfinite(r["test_accuracy"]) for r in records)
