"""Dataset loaders and the open-set split arithmetic."""
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mqnet_fast.data import DataError, load_dataset, load_digits, load_imagefolder
from mqnet_fast.experiment.split import make_open_set, num_ood_for



def test_digits_split_is_stratified_and_fixed():
    a, b = load_digits(), load_digits()
    assert a.train_images.shape == (1198, 8, 8, 1) and a.test_images.shape == (599, 8, 8, 1)
    assert a.train_images.dtype == np.uint8 and a.train_images.max() == 255
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    test_share = np.bincount(a.test_labels) / (np.bincount(a.test_labels) + np.bincount(a.train_labels))
    assert np.all(np.abs(test_share - 1 / 3) < 0.01)
    assert a.classes == [str(c) for c in range(10)] and a.flip is False


def _write_tree(root: Path, sizes=None, splits=("train", "test")):
    rng = np.random.RandomState(0)
    expected = {}
    for split in splits:
        for ci, cls in enumerate(["cat", "ant", "bee"]):  # written unsorted: class order must be sorted
            folder = root / "top" / split / cls
            folder.mkdir(parents=True)
            for i in range(2 + ci):
                size = (sizes or {}).get((split, cls, i), 6)
                pixels = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                expected[(split, cls, i)] = pixels
    return expected


@pytest.mark.parametrize("as_archive", [False, True])
def test_imagefolder_reads_tree_and_caches(tmp_path, as_archive):
    expected = _write_tree(tmp_path / "tree")
    source = tmp_path / "tree"
    if as_archive:
        source = tmp_path / "tree.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tmp_path / "tree" / "top", arcname="top")
    data = load_imagefolder(source, cache_dir=tmp_path / "cache")
    assert data.classes == ["ant", "bee", "cat"]
    assert data.train_images.shape == (9, 6, 6, 3)
    # ant has 3 images (index 1 in write order), bee 4, cat 2; labels follow the sorted class order.
    np.testing.assert_array_equal(data.train_labels, [0, 0, 0, 1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(data.train_images[0], expected[("train", "ant", 0)])
    np.testing.assert_array_equal(data.test_images[-1], expected[("test", "cat", 1)])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_dataset(f"imagefolder:{source}", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train_images, data.train_images)
    assert again.classes == data.classes


def test_imagefolder_cache_sees_an_edited_image(tmp_path):
    """Editing an image in place leaves the folders' own size and mtime as they were (set back here
    to make sure): the cache key must still change, so the reload decodes the new pixels."""
    _write_tree(tmp_path / "tree")
    image = tmp_path / "tree" / "top" / "train" / "ant" / "0.png"
    folders = [tmp_path / "tree", tmp_path / "tree" / "top", image.parent]
    folder_times = [f.stat().st_mtime_ns for f in folders]
    first = load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    old_time = image.stat().st_mtime_ns

    def edit(value: int, mtime_ns: int) -> np.ndarray:
        pixels = np.full((6, 6, 3), value, np.uint8)
        Image.fromarray(pixels).save(image)
        os.utime(image, ns=(mtime_ns, mtime_ns))
        for folder, ns in zip(folders, folder_times):
            os.utime(folder, ns=(ns, ns))
        return pixels

    # another size, the old mtime (as a copy that keeps times would leave it)
    edited = edit(7, old_time)
    size = image.stat().st_size
    again = load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train_images[0], edited)
    np.testing.assert_array_equal(again.train_images[1:], first.train_images[1:])
    # the same size, a later mtime (set: file timestamps can be coarser than the time between writes)
    edited = edit(8, old_time + 10**9)
    assert image.stat().st_size == size
    again = load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train_images[0], edited)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    # moved to a new class folder (same bytes and times, same place in the sorted listing): new labels
    for split in ("train", "test"):
        moved = tmp_path / "tree" / "top" / split / "aardvark"
        moved.mkdir()
        (image.parent.parent.parent / split / "ant" / "0.png").rename(moved / "0.png")
    for folder, ns in zip(folders, folder_times):
        os.utime(folder, ns=(ns, ns))
    renamed = load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert renamed.classes == ["aardvark", "ant", "bee", "cat"]
    np.testing.assert_array_equal(renamed.train_labels, [0, 1, 1, 2, 2, 2, 2, 3, 3])
    np.testing.assert_array_equal(renamed.train_images, again.train_images)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(tmp_path / "missing", cache_dir=tmp_path / "c")
    _write_tree(tmp_path / "only-train", splits=("train",))
    with pytest.raises(DataError, match="no images under test"):
        load_imagefolder(tmp_path / "only-train", cache_dir=tmp_path / "c")
    _write_tree(tmp_path / "mixed", sizes={("train", "bee", 1): 7})
    with pytest.raises(DataError, match="different sizes"):
        load_imagefolder(tmp_path / "mixed", cache_dir=tmp_path / "c")
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="neither a directory nor a readable tar"):
        load_imagefolder(tmp_path / "bad.tar.gz", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="needs --data-root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nowhere"))


def test_shared_cifar10_archive(shared_cifar10):
    data = shared_cifar10
    assert data.train_images.shape == (50000, 32, 32, 3) and data.test_images.shape == (10000, 32, 32, 3)
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    np.testing.assert_array_equal(np.bincount(data.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels), [1000] * 10)


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.2, 0.4, 0.6])
def test_open_set_arithmetic(tau):
    labels = np.repeat(np.arange(10), 100)  # 400 IN examples with 4 IN classes
    split = make_open_set(labels, 10, 4, tau, budget=50, seed=3)
    assert len(split.in_classes) == 4 and split.is_in.sum() == 400
    assert split.num_in_pool == 400 and split.num_ood_pool == round(400 * tau / (1 - tau))
    assert len(split.pool) == split.num_in_pool + split.num_ood_pool == len(np.unique(split.pool))
    assert split.is_in[split.pool].sum() == 400
    assert len(split.initial_labeled) == 50 and np.isin(split.initial_labeled, split.pool).all()
    again = make_open_set(labels, 10, 4, tau, budget=50, seed=3)
    np.testing.assert_array_equal(split.pool, again.pool)
    np.testing.assert_array_equal(split.initial_labeled, again.initial_labeled)
    assert split.notes == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_open_set_keeps_tau_when_ood_runs_short(seed):
    # 10 classes of 100: whichever 5 are IN, 500 IN and 500 OOD examples, and tau = 0.6 with all 500
    # IN examples would need 750 OOD ones: the fallback must subsample IN to 333, the most that 500
    # OOD examples cover (334 would need 501; 333 needs 499: 333 * 0.6 / 0.4 is 499.4999... in floats).
    labels = np.repeat(np.arange(10), 100)
    split = make_open_set(labels, 10, 5, 0.6, budget=20, seed=seed)
    assert num_ood_for(500, 0.6) == 750 > (~split.is_in).sum() == 500  # the fallback's precondition
    assert num_ood_for(334, 0.6) > 500 >= num_ood_for(333, 0.6) == 499
    assert split.num_in_pool == 333 and split.num_ood_pool == 499
    pool_in = split.is_in[split.pool]
    assert pool_in.sum() == 333 and (~pool_in).sum() == 499 and len(np.unique(split.pool)) == 832
    assert abs(split.num_ood_pool / len(split.pool) - 0.6) < 1e-3
    assert len(split.notes) == 1
    assert "fewer than the 750 that tau=0.6 needs" in split.notes[0] and "keeps 333 IN examples" in split.notes[0]
    assert len(split.initial_labeled) == 20 and np.isin(split.initial_labeled, split.pool).all()
    again = make_open_set(labels, 10, 5, 0.6, budget=20, seed=seed)
    np.testing.assert_array_equal(split.pool, again.pool)


def test_num_ood_for_rounds():
    assert num_ood_for(20000, 0.6) == 30000 and num_ood_for(20000, 0.1) == 2222 and num_ood_for(5, 0.5) == 5


def test_open_set_errors():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="tau must be in"):
        make_open_set(labels, 10, 4, 1.0, 5, 0)
    with pytest.raises(ValueError, match="num_in_classes"):
        make_open_set(labels, 10, 10, 0.2, 5, 0)
    with pytest.raises(ValueError, match="budget \\(1000\\) exceeds the pool"):
        make_open_set(labels, 10, 4, 0.2, 1000, 0)


def test_imagefolder_cache_entry_is_sealed(tmp_path):
    """An edited or damaged decoded-image cache entry is refused by name, not used."""
    _write_tree(tmp_path / "tree")
    data = load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    entry = next((tmp_path / "cache").glob("*.npz"))
    with np.load(entry) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train_images"] = arrays["train_images"].copy()
    arrays["train_images"][0, 0, 0, 0] ^= 1
    np.savez(entry, **arrays)
    with pytest.raises(DataError, match="decoded-image cache .* was edited or damaged.*delete it"):
        load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    entry.write_bytes(entry.read_bytes()[:64])
    with pytest.raises(DataError, match="decoded-image cache .* is not a readable .npz file"):
        load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    entry.unlink()
    again = load_imagefolder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train_images, data.train_images)
