"""How much does the digits target model's test accuracy move when only the training seed changes?

For fixed labeled sets drawn as the demo's open-set split would hold them (IN classes of seed 0,
4:6 split), train the target model with several training seeds (initialization and mini-batch
order) and report mean and std of the IN test accuracy, with the time per iteration, for a grid of
settings (iterations, lr, width). A strategy difference smaller than this spread cannot show in a few
seeds, so the digits defaults are chosen from this table.

    python benchmarks/engine/digits_training_spread.py [--seeds 5] [--out benchmarks/results/digits-training-spread.txt]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from mqnet_fast.data import load_digits
from mqnet_fast.experiment.split import make_open_set
from mqnet_fast.models import ResNet18
from mqnet_fast.training import DeviceImages, TrainConfig, infer, train_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="20,60", help="labeled IN set sizes")
    parser.add_argument("--iterations", default="100,300")
    parser.add_argument("--lrs", default="0.1,0.03")
    parser.add_argument("--widths", default="64,16")
    parser.add_argument("--out", default="benchmarks/results/digits-training-spread.txt")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    data = load_digits()
    split = make_open_set(data.train_labels, 10, 4, 0.6, 20, seed=0)
    mapping = np.full(10, -1)
    mapping[split.in_classes] = np.arange(4)
    mean, std = DeviceImages.channel_stats(data.train_images)
    train = DeviceImages(data.train_images, mean, std, torch.device("cpu"), data.flip)
    test = DeviceImages(data.test_images, mean, std, torch.device("cpu"), data.flip)
    test_rows = np.flatnonzero(mapping[data.test_labels] >= 0)
    test_truth = torch.from_numpy(mapping[data.test_labels[test_rows]])
    pool_in = split.pool[split.is_in[split.pool]]
    rng = np.random.RandomState(1)
    sets = {int(n): np.sort(rng.choice(pool_in, int(n), replace=False)) for n in args.sizes.split(",")}
    lines = [f"digits, IN classes {split.in_classes}, {len(test_rows)} IN test images; {args.seeds} training seeds "
             f"per cell; torch {torch.__version__}, {torch.get_num_threads()} threads",
             "| labeled IN | iterations | lr | width | accuracy mean (%) | std (points) | min..max | ms / iteration |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    grid = itertools.product(sets, [int(i) for i in args.iterations.split(",")],
                             [float(x) for x in args.lrs.split(",")], [int(w) for w in args.widths.split(",")])
    for size, iterations, lr, width in grid:
        accs, seconds = [], 0.0
        for seed in range(args.seeds):
            torch.manual_seed(1000 + seed)
            model = ResNet18(4, 1, width=width)
            index = torch.from_numpy(sets[size])
            labels = torch.from_numpy(mapping[data.train_labels[sets[size]]])
            tick = time.perf_counter()
            train_model(model, train, index, labels, TrainConfig(iterations, 64, lr), seed, show_progress=False)
            seconds += time.perf_counter() - tick
            logits = infer(model, test, torch.from_numpy(test_rows)).logits
            accs.append(100.0 * float((logits.argmax(1) == test_truth).float().mean()))
        accs = np.array(accs)
        line = (f"| {size} | {iterations} | {lr:g} | {width} | {accs.mean():.1f} | {accs.std(ddof=1):.1f} | "
                f"{accs.min():.1f}..{accs.max():.1f} | {1000 * seconds / (args.seeds * iterations):.0f} |")
        lines.append(line)
        print(line, flush=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
