"""Time per step of the digits target model's training (ResNet-18 width 16 with the loss module,
batch 64, 8x8 grey images, through training.target.train_model) and of the digits CSI encoder's
(256 views a step, through contrastive.train_encoder), A/B against the two layout choices the CPU
path makes: channels-last (--nchw: contiguous NCHW instead) and one-position convolutions computed
as linear maps (--plain-conv: every convolution through nn.Conv2d). Best of 3 timed passes.

    python benchmarks/engine/digits_step_time.py [--threads 1] [--nchw] [--plain-conv]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/engine/digits_step_time.py   # as AVX2
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

from mqnet_fast.models import resnet
from mqnet_fast.training import contrastive, factory, target
from mqnet_fast.training.images import DeviceImages

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nchw", action="store_true", help="contiguous NCHW models and batches")
    parser.add_argument("--plain-conv", action="store_true", help="every convolution through nn.Conv2d")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.plain_conv:
        resnet.Conv2d.forward = torch.nn.Conv2d.forward
    layout = torch.contiguous_format if args.nchw else torch.channels_last
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (400, 8, 8, 1)).astype(np.uint8)
    mean, std = DeviceImages.channel_stats(images)
    data = DeviceImages(images, mean, std, torch.device("cpu"), flip=False)
    data.channels_last = not args.nchw

    model = factory.make_model(4, 1, torch.device("cpu"), 0, loss_module=True, width=16).to(memory_format=layout)
    labels = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(0))
    rows = torch.arange(400)
    target.train_model(model, data, rows, labels, target.TrainConfig(iterations=20, lr=0.03), 0, show_progress=False)
    train_ms = 1e3 * best_of(lambda: target.train_model(model, data, rows, labels,
                                                         target.TrainConfig(iterations=100, lr=0.03), 0,
                                                         show_progress=False), per=100)

    make = contrastive.make_encoder
    contrastive.make_encoder = lambda *a, **kw: make(*a, **kw).to(memory_format=layout)
    config = dataclasses.replace(contrastive.DIGITS_ENCODER, epochs=1)
    pool = np.arange(320)
    contrastive.train_encoder(data, pool, config, 0, show_progress=False)
    best = best_of(lambda: contrastive.train_encoder(data, pool, config, 0, show_progress=False),
                   per=config.steps_per_epoch(len(pool)))
    print(f"threads {args.threads}, {'NCHW' if args.nchw else 'channels-last'}, "
          f"{'nn.Conv2d everywhere' if args.plain_conv else 'one-position convolutions as linear maps'}, "
          f"oneDNN ISA cap {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}: target step {train_ms:.1f} ms, "
          f"CSI encoder step {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
