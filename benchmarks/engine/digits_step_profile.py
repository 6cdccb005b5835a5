"""Where the digits target model's training step spends its time (8x8 grey images, batch 64, SGD),
for the standard ResNet-18 (width 64) and the digits default (width 16): time per step and the top
operators by self CPU time from torch.profiler.

    python benchmarks/engine/digits_step_profile.py [--threads 1] > benchmarks/results/digits-step-profile.txt
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mqnet_fast.models import ResNet18


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 64 of 1x8x8, 4 classes")
    for width in (64, 16):
        torch.manual_seed(0)
        model = ResNet18(4, 1, width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        tick = time.perf_counter()
        for _ in range(args.steps):
            step()
        per_step = (time.perf_counter() - tick) / args.steps
        print(f"\nwidth {width}: {1000 * per_step:.1f} ms per step ({sum(p.numel() for p in model.parameters()):,} parameters)")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


if __name__ == "__main__":
    main()
