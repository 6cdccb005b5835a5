"""Realistic benchmark data: penultimate features (N, 512) and softmax (N, 10) of a ResNet-18 trained
briefly on the shared CIFAR-10 images (../shared/data/cifar10-jpeg.tar.gz), for the k-center and
BADGE benchmarks. Cached in benchmarks/.cache/ (not committed); build it with

    python benchmarks/ops/cifar_features.py [--iterations 300]

(about 10 minutes on 2 CPU cores: training, then one pass over the 50,000 training images).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
CACHE = ROOT / ".cache" / "cifar10-resnet18-features.pt"
ARCHIVE = ROOT.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_features():
    """(feats (50000, 512) float32, probs (50000, 10) float32, meta) or None when not built."""
    if not CACHE.exists():
        return None
    blob = torch.load(CACHE)
    return blob["feats"], blob["probs"], blob["meta"]


def main():
    from mqnet_fast.data import load_imagefolder
    from mqnet_fast.training import DeviceImages, TrainConfig, infer, make_model, train_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    data = load_imagefolder(ARCHIVE)
    mean, std = DeviceImages.channel_stats(data.train_images)
    device = torch.device("cpu")
    images = DeviceImages(data.train_images, mean, std, device, flip=True)
    model = make_model(10, 3, device, seed=0)
    start = time.perf_counter()
    loss = train_model(model, images, torch.arange(len(images)), torch.from_numpy(data.train_labels),
                       TrainConfig(iterations=args.iterations), seed=0, desc="train on CIFAR-10")
    trained = time.perf_counter() - start
    logits, feats, _ = infer(model, images, batch_size=500)
    accuracy = float((logits.argmax(1).numpy() == data.train_labels).mean())
    meta = {"iterations": args.iterations, "final_loss": loss, "train_accuracy": accuracy,
            "train_s": trained, "extract_s": time.perf_counter() - start - trained}
    CACHE.parent.mkdir(exist_ok=True)
    torch.save({"feats": feats, "probs": torch.softmax(logits, 1), "meta": meta}, CACHE)
    print(meta)


if __name__ == "__main__":
    main()
