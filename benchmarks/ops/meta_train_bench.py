"""MQ-Net's meta-model training (Phi: 2 -> 64 -> 1, ranking loss, SGD with momentum) on a 500-example
query set, 100 epochs x 100 steps of batch 64: the eager loop (mqnet_fast.reference.nonneg_mlp_rank_train,
autograd + torch.optim.SGD) against the compiled op (ops.nonneg_mlp_rank_train, backend="cpp"), same
mini-batches and learning rates, built as the meta-model training loop builds them (one
argsort(rand(steps_per_epoch, n)) per epoch from one seeded generator; lr x0.1 from half the epochs).
Times the eager loop once and the op best of 3, checks the final parameters agree, and writes the
report to benchmarks/results/meta-train-cpu.txt.

    python benchmarks/ops/meta_train_bench.py [--epochs 100] [--threads N]
"""
import argparse
import math
import os
import platform
import sys
from pathlib import Path

import torch

from mqnet_fast import ops, reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import seconds  # noqa: E402

N, K, HIDDEN, BATCH, MIN_STEPS = 500, 2, 64, 64, 100
LR, MOMENTUM, WEIGHT_DECAY, MARGIN = 0.01, 0.9, 5e-4, 0.1  # the meta-model training defaults


def query_set(seed: int = 0):
    """z ~ N(0, 1) (n, 2); targets: 40% exact zeros (OOD examples), the rest positive losses."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, K, generator=g)
    targets = torch.rand(N, generator=g) * 3 + 1e-3
    targets[torch.randperm(N, generator=g)[: int(0.4 * N)]] = 0.0
    return z, targets


def schedule(epochs: int, seed: int = 0):
    """The mini-batches (S, batch) and per-step learning rates (S,), exactly as the training loop draws them."""
    generator = torch.Generator().manual_seed(seed)
    batch = min(BATCH, N)
    steps_per_epoch = max(math.ceil(N / BATCH), MIN_STEPS)
    batches, lrs = [], []
    for epoch in range(epochs):
        lr = LR * (0.1 if epoch >= epochs // 2 else 1.0)
        batches.append(torch.argsort(torch.rand(steps_per_epoch, N, generator=generator), dim=1)[:, :batch])
        lrs.append(torch.full((steps_per_epoch,), lr, dtype=torch.float32))
    return torch.cat(batches), torch.cat(lrs)


def init_phi(seed: int = 0):
    """MetaModel's initialization: non-negative weights U(0, 1/sqrt(in)), biases U(-1/sqrt(in), 1/sqrt(in))."""
    g = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for fan_in, fan_out in ((K, HIDDEN), (HIDDEN, 1)):
        bound = 1.0 / math.sqrt(fan_in)
        weights.append(torch.rand(fan_out, fan_in, generator=g) * bound)
        biases.append((torch.rand(fan_out, generator=g) * 2 - 1) * bound)
    return weights, biases


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "results" / "meta-train-cpu.txt"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    z, targets = query_set()
    batches, lrs = schedule(args.epochs)
    weights, biases = init_phi()
    kwargs = dict(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, margin=MARGIN)

    eager = []
    eager_s = seconds(lambda: eager.append(reference.nonneg_mlp_rank_train(z, targets, batches, lrs, weights,
                                                                          biases, **kwargs)))
    eager_w, eager_b, eager_losses = eager[0]
    results = []
    op_times = [seconds(lambda: results.append(ops.nonneg_mlp_rank_train(z, targets, batches, lrs, weights, biases,
                                                                          backend="cpp", **kwargs)))
                for _ in range(3)]
    op_s = min(op_times)
    res = results[-1]

    lines = [f"meta-model training: n={N} k={K} H={HIDDEN} batch={BATCH}, {args.epochs} epochs x "
             f"{batches.shape[0] // args.epochs} steps = {batches.shape[0]} SGD steps "
             f"(lr {LR} then {LR * 0.1}, momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}, margin {MARGIN})",
             f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} torch threads (the op runs single-threaded), "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start",
             f"eager loop (autograd + torch.optim.SGD), 1 run: {eager_s:.3f} s",
             f"nonneg_mlp_rank_train (cpp), best of 3:      {op_s:.4f} s  (runs: "
             + ", ".join(f"{t:.4f}" for t in op_times) + ")",
             f"ratio eager / op: {eager_s / op_s:.0f}x"]
    worst = 0.0
    names = ["W1", "W2", "b1", "b2"]
    for name, got, want in zip(names, res.weights + res.biases, eager_w + eager_b):
        rel = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        worst = max(worst, rel)
        lines.append(f"final {name}: max |op - eager| / max |eager| = {rel:.2e}")
    loss_gap = (res.losses - eager_losses).abs().max().item()
    lines.append(f"per-step losses: max |op - eager| = {loss_gap:.2e}; mean loss of the last epoch: op "
                 f"{res.losses[-batches.shape[0] // args.epochs:].mean().item():.6f}, eager "
                 f"{eager_losses[-batches.shape[0] // args.epochs:].mean().item():.6f}")
    agree = worst <= 1e-4
    lines.append(f"final parameters agree to 1e-4 relative: {'yes' if agree else 'NO'} (worst {worst:.2e})")
    report = "\n".join(lines)
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")
    if not agree:
        raise SystemExit("final parameters disagree")


if __name__ == "__main__":
    main()
