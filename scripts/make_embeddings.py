"""Make an embeddings file (for `mqnet-fast run --dataset embeddings:FILE.npz`) from any dataset the
engine loads: digits, cifar10/cifar100 (--data-root), imagefolder:<dir or .tar.gz> (read in place).

    python scripts/make_embeddings.py --dataset digits --encoder pixels --out digits-pixels.npz
    python scripts/make_embeddings.py --dataset imagefolder:../shared/data/cifar10-jpeg.tar.gz \\
        --encoder pixels --dim 256 --out cifar10-pixels.npz
    python scripts/make_embeddings.py --dataset imagefolder:../shared/data/cifar10-jpeg.tar.gz \\
        --encoder csi --epochs 20 --width 32 --out cifar10-csi.npz
    python scripts/make_embeddings.py --dataset imagefolder:../shared/data/cifar10-jpeg.tar.gz \\
        --weights resnet18.pth --arch resnet18 --out cifar10-resnet18.npz

Encoders (none of them sees a label; each is fitted on the training split only, or on
--fit-subset N of its images drawn with --seed, and then embeds every train and test image):
- ``pixels``: PCA of the raw pixels (0..1) to --dim components, exact (the covariance in float64
  and its eigendecomposition); a fast baseline.
- ``csi``: the library's CSI contrastive encoder (mqnet_fast.training.contrastive, self-supervised),
  --epochs, --width, --batch-size; the features of --layer (penultimate, the default, or the
  projection head's output). The engine's own CSI purity trains one per (pool, seed); this one is
  trained once on the training split (IN and OOD classes, including examples outside any pool).
- ``--weights FILE``: a torchvision ResNet checkpoint (--arch) you have on disk (nothing is ever
  downloaded), its penultimate (pooled) features of the images resized to --resize and normalized
  with ImageNet's mean and std; grey images are repeated to 3 channels.

The file holds train_feats, train_labels, test_feats, test_labels, classes and meta (a JSON string:
the source dataset, the encoder, its settings and the seconds it took).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.data import DataError, ImageArrays, load_dataset
from mqnet_fast.io import atomic_save_npz

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def fit_rows(num_train: int, subset: int | None, seed: int) -> np.ndarray:
    """The training rows an encoder is fitted on: all, or `subset` of them drawn with `seed` (sorted)."""
    if subset is None or subset >= num_train:
        return np.arange(num_train)
    if subset < 2:
        raise ValueError(f"--fit-subset must be >= 2, got {subset}")
    return np.sort(np.random.RandomState(seed).choice(num_train, size=subset, replace=False))


def _flat_pixels(images: np.ndarray, start: int, stop: int) -> np.ndarray:
    return images[start:stop].reshape(stop - start, -1).astype(np.float64) / 255.0


def pixel_pca(data: ImageArrays, dim: int, rows: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train, test) projections (N, k) float32 on the top k = min(dim, pixels) principal components
    of the training rows `rows` (pixels in 0..1, centred with their mean). Each component's sign makes
    its largest loading positive, so the result does not depend on the eigensolver's signs."""
    fit = data.train_images[rows]
    pixels = int(np.prod(fit.shape[1:]))
    k = min(int(dim), pixels)
    if k < 1:
        raise ValueError(f"--dim must be >= 1, got {dim}")
    total = np.zeros(pixels)
    scatter = np.zeros((pixels, pixels))
    for start in range(0, len(fit), chunk):
        block = _flat_pixels(fit, start, min(start + chunk, len(fit)))
        total += block.sum(0)
        scatter += block.T @ block
    mean = total / len(fit)
    covariance = scatter / len(fit) - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:k]
    components = eigenvectors[:, order]
    signs = np.sign(components[np.abs(components).argmax(0), np.arange(k)])
    components *= np.where(signs == 0, 1.0, signs)

    def project(images: np.ndarray) -> np.ndarray:
        out = np.empty((len(images), k), np.float32)
        for start in range(0, len(images), chunk):
            stop = min(start + chunk, len(images))
            out[start:stop] = (_flat_pixels(images, start, stop) - mean) @ components
        return out

    explained = float(eigenvalues[order].sum() / max(eigenvalues.clip(min=0).sum(), 1e-300))
    return project(data.train_images), project(data.test_images), {"dim": k, "explained_variance": explained}


def csi_features(data: ImageArrays, rows: np.ndarray, *, epochs: int, width: int | None, batch_size: int | None,
                 layer: str, seed: int, device: torch.device,
                 show_progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """CSI's encoder (the dataset's EncoderConfig with the given epochs, width, batch size, and a
    warm-up of a tenth of the epochs where the dataset's is longer) trained on the training rows
    `rows` with `seed`, then the `layer` features of every train and test image."""
    from mqnet_fast.training import DeviceImages
    from mqnet_fast.training.contrastive import EncoderConfig, embed, train_encoder

    # The dataset's warm-up (CIFAR: CSI's 10 epochs, of 1,000) would fill a short schedule: a tenth of it.
    default = EncoderConfig.for_dataset(data.name)
    changes = {"epochs": epochs, "warmup_epochs": min(default.warmup_epochs, max(1, round(epochs / 10)))}
    if width is not None:
        changes["width"] = width
    if batch_size is not None:
        changes["batch_size"] = batch_size
    config = dataclasses.replace(default, **changes)
    mean, std = DeviceImages.channel_stats(data.train_images)
    train = DeviceImages(data.train_images, mean, std, device, data.flip)
    test = DeviceImages(data.test_images, mean, std, device, data.flip)
    tick = time.perf_counter()
    encoder = train_encoder(train, rows, config, seed, show_progress=show_progress)
    train_s = time.perf_counter() - tick
    steps = config.epochs * config.steps_per_epoch(len(rows))
    feats = [embed(encoder, split, np.arange(len(split)), layer=layer).cpu().numpy() for split in (train, test)]
    return feats[0], feats[1], {"config": dataclasses.asdict(config), "layer": layer, "encoder_train_s": train_s,
                                "steps": steps, "s_per_step": train_s / max(steps, 1),
                                "s_per_epoch": train_s / max(config.epochs, 1)}


def load_checkpoint_model(path: str, arch: str) -> torch.nn.Module:
    """A torchvision ResNet `arch` with the state dict of `path` (plain or under "state_dict" /
    "model", DataParallel's "module." prefixes removed), loaded with weights_only=True; its fc is
    replaced by the identity, so the output is the pooled penultimate features."""
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"--weights {path!r} does not exist") from None
    except Exception as err:  # a file torch cannot read, or one that needs pickled objects
        raise ValueError(f"--weights {path!r} is not a loadable state dict ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ValueError(f"--weights {path!r} does not hold a torchvision ResNet state dict (no 'fc.weight')")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = getattr(torchvision.models, arch)(weights=None, num_classes=int(state["fc.weight"].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"--weights {path!r} does not fit torchvision's {arch}: {err}") from err
    model.fc = torch.nn.Identity()
    return model.eval()


@torch.no_grad()
def checkpoint_features(data: ImageArrays, path: str, arch: str, resize: int | None, device: torch.device,
                        batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, dict]:
    """The penultimate features of a torchvision ResNet checkpoint for every train and test image."""
    model = load_checkpoint_model(path, arch).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def run(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            if resize is not None and batch.shape[-2:] != (resize, resize):
                batch = F.interpolate(batch, size=(resize, resize), mode="bilinear", align_corners=False,
                                      antialias=True)
            out.append(model((batch - mean) / std).float().cpu().numpy())
        return np.concatenate(out)

    tick = time.perf_counter()
    train, test = run(data.train_images), run(data.test_images)
    return train, test, {"arch": arch, "weights": str(path), "resize": resize, "embed_s": time.perf_counter() - tick}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="digits, cifar10, cifar100 or imagefolder:<dir or .tar.gz>")
    parser.add_argument("--data-root", help="folder with torchvision's CIFAR files (cifar10/cifar100)")
    parser.add_argument("--cache-dir", help="where decoded ImageFolder arrays are cached")
    parser.add_argument("--encoder", choices=("pixels", "csi"), default="pixels",
                        help="pixels: PCA of the raw pixels; csi: CSI's contrastive encoder (ignored with --weights)")
    parser.add_argument("--weights", help="a local torchvision ResNet checkpoint: its penultimate features")
    parser.add_argument("--arch", default="resnet18", help=f"the checkpoint's architecture ({', '.join(ARCHS)})")
    parser.add_argument("--resize", type=int, default=224,
                        help="with --weights: the side images are resized to (default 224; 0 keeps their size)")
    parser.add_argument("--dim", type=int, default=256, help="pixels: principal components kept (default 256)")
    parser.add_argument("--epochs", type=int, default=20, help="csi: encoder epochs (default 20)")
    parser.add_argument("--width", type=int, help="csi: encoder ResNet-18 width (default: the dataset's)")
    parser.add_argument("--batch-size", type=int, help="csi: images per step (8 views each; default: the dataset's)")
    parser.add_argument("--layer", choices=("penultimate", "projection"), default="penultimate",
                        help="csi: which features to save (default penultimate)")
    parser.add_argument("--fit-subset", type=int, help="fit the encoder on this many training images (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (GPU if visible), cpu, cuda, ...")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def make_embeddings(args: argparse.Namespace) -> dict:
    """The arrays of the embeddings file for parsed `args` (see build_parser)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    data = load_dataset(args.dataset, args.data_root, cache_dir=args.cache_dir)
    if not isinstance(data, ImageArrays):
        raise DataError(f"--dataset {args.dataset!r} is embeddings already; make_embeddings reads images")
    rows = fit_rows(len(data.train_labels), args.fit_subset, args.seed)
    tick = time.perf_counter()
    if args.weights:
        encoder = "weights"
        train, test, info = checkpoint_features(data, args.weights, args.arch, args.resize or None, device)
    elif args.encoder == "pixels":
        encoder = "pixels"
        train, test, info = pixel_pca(data, args.dim, rows)
    else:
        encoder = "csi"
        train, test, info = csi_features(data, rows, epochs=args.epochs, width=args.width, batch_size=args.batch_size,
                                         layer=args.layer, seed=args.seed, device=device,
                                         show_progress=not args.quiet)
    meta = {"dataset": args.dataset, "encoder": encoder, "fit_rows": int(len(rows)), "seed": args.seed,
            "seconds": time.perf_counter() - tick, **info}
    return {"train_feats": train.astype(np.float32), "train_labels": data.train_labels.astype(np.int64),
            "test_feats": test.astype(np.float32), "test_labels": data.test_labels.astype(np.int64),
            "classes": np.array(data.classes), "meta": np.array(json.dumps(meta))}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        arrays = make_embeddings(args)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_save_npz(args.out, **arrays)
    meta = json.loads(str(arrays["meta"]))
    print(f"{args.out}: train {arrays['train_feats'].shape}, test {arrays['test_feats'].shape}, "
          f"encoder {meta['encoder']}, {meta['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
