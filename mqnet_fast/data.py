"""Datasets as uint8 image arrays or fixed embeddings with integer labels (the open-set split of the
MQ-Net paper, protocol rather than data, is mqnet_fast.experiment.split).

An image dataset is held as `ImageArrays`: train/test images (N, H, W, C) uint8 and labels (N,)
int64, read once and cached, so training never decodes an image and labels never come from image
files. An embeddings dataset is held as `FeatureArrays`: train/test features (N, d) float32 and
labels (N,) int64; the open-set split reads only labels, so it is the same for both.

Names accepted by `load_dataset`:
- ``digits``: scikit-learn's `load_digits` (1,797 8x8 grey images, shipped inside scikit-learn, no
  download), split into train/test by a fixed seeded stratified split (1/3 test).
- ``cifar10`` / ``cifar100``: torchvision's format under ``data_root`` (downloaded only when
  ``download=True``).
- ``imagefolder:<path>``: a tree ``<path>/[<top>/]train/<class>/*`` and ``.../test/<class>/*``, either a
  directory or a ``.tar``/``.tar.gz``/``.tgz`` archive read in place. Class index = sorted class-folder
  order (torchvision's ImageFolder order); all images must have the same size.
- ``embeddings:<file.npz>``: fixed embeddings (e.g. a foundation model's, or made from any dataset
  above by scripts/make_embeddings.py), arrays ``train_feats`` (N, d) and ``test_feats`` (M, d) of
  floats, ``train_labels`` (N,) and ``test_labels`` (M,) of integers 0..C-1, and optionally
  ``classes`` (C,) of strings; read without pickles (`load_embeddings`).

The cross-dataset setup (IN from one image dataset, OOD from another) joins two of them with
`with_ood_dataset`: the OOD images are converted to the IN images' size and channels and their classes
follow the IN ones.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mqnet_fast.io import atomic_save_npz, read_npz

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder:<path>", "embeddings:<file.npz>")
EMBEDDING_ARRAYS = ("train_feats", "train_labels", "test_feats", "test_labels")


class DataError(ValueError):
    """A dataset name, root or tree that cannot be used; the message says what is wrong."""


@dataclass
class ImageArrays:
    name: str
    classes: list[str]
    train_images: np.ndarray  # (N, H, W, C) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    flip: bool = True  # horizontal flips are a valid augmentation (not for digits)
    in_classes: list[int] | None = None  # fixed IN classes (the cross-dataset setup); None: drawn by the split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


@dataclass
class FeatureArrays:
    """Fixed embeddings: the target model is a head over them (mqnet_fast.models.FeatureHead)."""
    name: str
    classes: list[str]
    train_feats: np.ndarray   # (N, d) float32, finite
    train_labels: np.ndarray  # (N,) int64 in 0..C-1
    test_feats: np.ndarray    # (M, d) float32
    test_labels: np.ndarray   # (M,) int64 in 0..C-1

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_dim(self) -> int:
        return int(self.train_feats.shape[1])


def is_embeddings(name: str) -> bool:
    """Whether the dataset name `name` names an embeddings file (``embeddings:<file.npz>``)."""
    return str(name).startswith("embeddings:")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MQNET_FAST_CACHE", Path.home() / ".cache" / "mqnet-fast"))


def load_dataset(name: str, data_root: str | None = None, *, download: bool = False,
                 cache_dir: str | Path | None = None) -> ImageArrays | FeatureArrays:
    """Load a dataset by name (see the module docstring)."""
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_root, download=download)
    if name.startswith("imagefolder:"):
        path = name[len("imagefolder:"):]
        if not path:
            raise DataError("dataset 'imagefolder:' needs a path, e.g. imagefolder:../shared/data/cifar10-jpeg.tar.gz")
        return load_imagefolder(path, cache_dir=cache_dir)
    if is_embeddings(name):
        path = name[len("embeddings:"):]
        if not path:
            raise DataError("dataset 'embeddings:' needs a path, e.g. embeddings:cifar10-pca.npz")
        return load_embeddings(path)
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def load_digits(test_fraction: float = 1 / 3, seed: int = 0) -> ImageArrays:
    """scikit-learn's digits as 8x8x1 uint8 images (0..16 scaled to 0..255), stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    rng = np.random.RandomState(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test[rng.permutation(members)[: int(round(len(members) * test_fraction))]] = True
    return ImageArrays("digits", [str(c) for c in bunch.target_names], images[~test], labels[~test],
                       images[test], labels[test], flip=False)


def load_cifar(name: str, data_root: str | None, *, download: bool = False) -> ImageArrays:
    import torchvision

    if data_root is None:
        raise DataError(f"dataset {name!r} needs --data-root (the folder torchvision's {name.upper()} "
                        "files are in, or where to download them with --download)")
    if not download and not Path(data_root).is_dir():
        raise DataError(f"data root {data_root!r} does not exist (pass --download to fetch {name} there)")
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train = cls(data_root, train=True, download=download)
        test = cls(data_root, train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{name} not found or corrupted under {data_root!r} ({err}); "
                        "pass --download to fetch it") from err
    return ImageArrays(name, list(train.classes), np.asarray(train.data), np.asarray(train.targets, np.int64),
                       np.asarray(test.data), np.asarray(test.targets, np.int64))


def load_imagefolder(path: str | Path, *, cache_dir: str | Path | None = None) -> ImageArrays:
    """An ImageFolder tree with train/ and test/ splits, from a directory or an archive, decoded once
    and cached as one uint8 array per split. The cache key covers what the arrays are made from: for
    a directory, every image file's relative path, size and modification time (an image edited in
    place changes neither its folder's size nor its folder's mtime); for an archive, the archive
    file's size and modification time (any change to a member rewrites the archive)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"imagefolder path {str(path)!r} does not exist")
    listing = None if path.is_file() else _directory_listing(path)
    key = _imagefolder_key(path, listing)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"imagefolder-{key}.npz"
    if cached.exists():
        arrays = read_npz(cached, f"the decoded-image cache {str(cached)!r}", error=DataError)
        if "sha256" in arrays:  # entries written before they were sealed are decoded again
            names = ("classes", "train_images", "train_labels", "test_images", "test_labels")
            if any(name not in arrays for name in names) or str(arrays["sha256"]) != _cache_digest(key, arrays):
                raise DataError(f"the decoded-image cache {str(cached)!r} was edited or damaged (its content does not "
                                "match its sha256); delete it to decode the images again")
            return ImageArrays(f"imagefolder:{path}", [str(c) for c in arrays["classes"]], arrays["train_images"],
                               arrays["train_labels"], arrays["test_images"], arrays["test_labels"])
    files = _archive_images(path) if listing is None else _directory_images(path, listing)
    splits = _split_tree(files, str(path))
    classes = splits["train"][0]
    if splits["test"][0] != classes:
        raise DataError(f"imagefolder {str(path)!r}: train classes {classes} differ from test classes "
                        f"{splits['test'][0]}")
    arrays = {}
    for split, (_, items) in splits.items():
        images = [_decode(read(), f"{path}:{name}") for name, _, read in items]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataError(f"imagefolder {str(path)!r}: {split} images have different sizes {sorted(shapes)[:4]}; "
                            "resize them to one size first")
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.array([classes.index(c) for _, c, _ in items], np.int64)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(f"imagefolder {str(path)!r}: train and test image sizes differ")
    arrays["classes"] = np.array(classes)
    atomic_save_npz(cached, sha256=np.array(_cache_digest(key, arrays)), **arrays)
    del arrays["classes"]
    return ImageArrays(f"imagefolder:{path}", classes, arrays["train_images"], arrays["train_labels"],
                       arrays["test_images"], arrays["test_labels"])


def _cache_digest(key: str, arrays: dict) -> str:
    """sha256 over the cache key and the decoded arrays (the seal of a decoded-image cache entry)."""
    digest = hashlib.sha256(key.encode())
    for name in ("classes", "train_images", "train_labels", "test_images", "test_labels"):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"|{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _imagefolder_key(path: Path, listing: list[tuple[str, int, int]] | None) -> str:
    """16 hex digits over the resolved path and, for an archive (listing None), its size and mtime
    (the key this loader always had for archives, so their caches stay valid); for a directory,
    every listed image's (relative path, size, mtime_ns)."""
    if listing is None:
        stat = path.stat()
        return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    digest = hashlib.sha1(f"imagefolder-directory|{path.resolve()}".encode())
    for name, size, mtime_ns in listing:
        digest.update(f"|{name}|{size}|{mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _directory_listing(root: Path) -> list[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every image file under `root`, sorted by path."""
    listing = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                full = Path(dirpath) / name
                stat = full.stat()
                listing.append((full.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(listing)


def load_embeddings(path: str | Path) -> FeatureArrays:
    """Fixed embeddings from an .npz file (format in the module docstring), loaded with
    allow_pickle=False and checked: every array present, the features 2-D floats with one width d
    and only finite values, the labels 1-D integers, one per feature row, in 0..C-1 with every class
    present in the training split (C = len(classes) if given, else the largest label + 1). A problem
    raises DataError naming the array. Features are returned as float32."""
    path = Path(path)
    where = f"embeddings {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where} does not exist" if not path.exists() else f"{where} is not a file")
    archive = read_npz(path, where, error=DataError)  # headers checked against the memory limit first
    present = set(archive)
    arrays = {}
    for name in EMBEDDING_ARRAYS + (("classes",) if "classes" in present else ()):
        if name not in present:
            holds = ", ".join(sorted(present)) or "nothing"
            raise DataError(f"{where}: array {name!r} is missing (the file holds {holds}; "
                            f"expected {', '.join(EMBEDDING_ARRAYS)}, optionally classes)")
        arrays[name] = archive[name]
    dims = {}
    for split in ("train", "test"):
        feats, labels = arrays[f"{split}_feats"], arrays[f"{split}_labels"]
        if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
            raise DataError(f"{where}: array '{split}_feats' must be 2-D (examples, features) with both sizes >= 1, "
                            f"got shape {feats.shape}")
        if not np.issubdtype(feats.dtype, np.floating):
            raise DataError(f"{where}: array '{split}_feats' must hold floats, got dtype {feats.dtype}")
        bad = int(np.count_nonzero(~np.isfinite(feats)))
        if bad:
            raise DataError(f"{where}: array '{split}_feats' holds {bad} NaN or Inf value(s)")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: array '{split}_labels' must be 1-D integers, got shape {labels.shape} "
                            f"dtype {labels.dtype}")
        if len(labels) != len(feats):
            raise DataError(f"{where}: array '{split}_labels' has {len(labels)} labels for the "
                            f"{len(feats)} rows of '{split}_feats'")
        if labels.min() < 0:
            raise DataError(f"{where}: array '{split}_labels' holds negative labels (min {int(labels.min())}); "
                            "labels must be 0..C-1")
        dims[split] = feats.shape[1]
    if dims["train"] != dims["test"]:
        raise DataError(f"{where}: array 'test_feats' has {dims['test']} features per row, "
                        f"'train_feats' {dims['train']}")
    top = int(max(arrays["train_labels"].max(), arrays["test_labels"].max()))
    if top >= len(arrays["train_labels"]):  # before building anything of that size
        raise DataError(f"{where}: labels go up to {top}, but 'train_labels' holds {len(arrays['train_labels'])} "
                        f"examples, too few for every class 0..{top} to be present; labels must be 0..C-1 with every "
                        "class present in the training split")
    for split in ("train", "test"):
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int64)
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DataError(f"{where}: array 'classes' must be 1-D strings, got shape {classes.shape} "
                            f"dtype {classes.dtype}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]
        if top >= len(classes):
            raise DataError(f"{where}: labels go up to {top} but array 'classes' names {len(classes)} classes")
    else:
        classes = [str(c) for c in range(top + 1)]
    counts = np.bincount(arrays["train_labels"], minlength=len(classes))
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise DataError(f"{where}: array 'train_labels' has no example of class(es) {missing[:8].tolist()} "
                        f"of 0..{len(classes) - 1}; labels must be 0..C-1 with every class present")
    if len(classes) < 2:
        raise DataError(f"{where}: array 'train_labels' holds one class; an open-set split needs at least 2")
    return FeatureArrays(f"embeddings:{path}", classes,
                         np.ascontiguousarray(arrays["train_feats"], dtype=np.float32),
                         arrays["train_labels"].astype(np.int64),
                         np.ascontiguousarray(arrays["test_feats"], dtype=np.float32),
                         arrays["test_labels"].astype(np.int64))


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image = image.convert("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
    except Exception as err:  # PIL raises several types for broken files
        raise DataError(f"cannot decode image {where}: {err}") from err
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _directory_images(root: Path, listing: list[tuple[str, int, int]]):
    for name, _, _ in listing:
        yield name, (root / name).read_bytes


def _archive_images(archive: Path):
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as err:
        raise DataError(f"imagefolder {str(archive)!r} is neither a directory nor a readable tar archive: {err}") from err
    with tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                data = tar.extractfile(member).read()
                yield member.name, (lambda data=data: data)


def _split_tree(files, where: str) -> dict:
    """Group (relative name, reader) pairs into {split: (classes, [(name, class, reader)])}; the tree is
    [<top>/]<split>/<class>/<file>."""
    found = {"train": [], "test": []}
    for name, read in files:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in found:
            found[parts[-3]].append((name, parts[-2], read))
    for split, items in found.items():
        if not items:
            raise DataError(f"imagefolder {where!r} has no images under {split}/<class>/ "
                            "(expected [<top>/]train/<class>/* and [<top>/]test/<class>/*)")
    out = {}
    for split, items in found.items():
        items.sort(key=lambda item: item[0])
        out[split] = (sorted({c for _, c, _ in items}), items)
    return out


# --------------------------------------------------------------------------------------------------
# The cross-dataset setup

OOD_PREFIX = "ood:"
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's convert("L") uses


def convert_images(images: np.ndarray, size: tuple[int, int], channels: int, chunk: int = 4096) -> np.ndarray:
    """(N, H, W, C) uint8 images as (N, size[0], size[1], channels) uint8: each side shrunk by torch's
    "area" interpolation (adaptive average pooling: for an integer ratio the mean of the source pixels
    each output pixel covers; otherwise the mean of the source pixels its window touches, partly
    covered ones at full weight) or grown bilinearly (align_corners=False); RGB to one channel by BT.601 luma, one channel to RGB by
    repeating it. Values are rounded to the nearest integer, in chunks of `chunk` images."""
    import torch
    import torch.nn.functional as F

    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] not in (1, 3):
        raise DataError(f"images must be (N, H, W, 1 or 3) uint8, got shape {images.shape} dtype {images.dtype}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    out = np.empty((images.shape[0], size[0], size[1], channels), np.uint8)
    for start in range(0, images.shape[0], chunk):
        x = torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).double()
        if x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        for dim, target in ((2, size[0]), (3, size[1])):  # each side on its own: shrink and grow may mix
            if x.shape[dim] == target:
                continue
            shape = [target if d == dim else x.shape[d] for d in (2, 3)]
            mode = "area" if target < x.shape[dim] else "bilinear"
            x = F.interpolate(x, size=shape, mode=mode, **({} if mode == "area" else {"align_corners": False}))
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        out[start:start + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def with_ood_dataset(in_data: ImageArrays, ood_data: ImageArrays) -> ImageArrays:
    """One dataset of `in_data`'s classes (labels 0..C-1, all of them IN) followed by `ood_data`'s
    (labels C.., named "ood:<class>", all of them OOD: `in_classes`), its images converted to the IN
    images' size and channels (`convert_images`); train and test splits each joined. Flips follow the
    IN dataset."""
    if not isinstance(in_data, ImageArrays) or not isinstance(ood_data, ImageArrays):
        bad = in_data if not isinstance(in_data, ImageArrays) else ood_data
        raise DataError(f"the cross-dataset setup needs two image datasets; {bad.name!r} is fixed embeddings")
    height, width, channels = in_data.image_shape
    joined = {}
    for split in ("train", "test"):
        ood_images = convert_images(getattr(ood_data, f"{split}_images"), (height, width), channels)
        joined[f"{split}_images"] = np.concatenate([getattr(in_data, f"{split}_images"), ood_images])
        joined[f"{split}_labels"] = np.concatenate([getattr(in_data, f"{split}_labels"),
                                                    getattr(ood_data, f"{split}_labels") + in_data.num_classes])
    classes = list(in_data.classes) + [OOD_PREFIX + c for c in ood_data.classes]
    return ImageArrays(f"{in_data.name}+{OOD_PREFIX}{ood_data.name}", classes, flip=in_data.flip,
                       in_classes=list(range(in_data.num_classes)), **joined)
