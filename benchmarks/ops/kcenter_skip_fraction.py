"""How many row reads the triangle-inequality pruning of k-center greedy skips (csrc/cpu/kcenter_greedy.cpp,
mqnet_fast/ops/kcenter_greedy_triton.py with prune=True), on the GPU benchmark's kind of data: Gaussian rows,
the clustered mixture of benchmarks/ops/data.py, and the CIFAR-10 ResNet-18 features where they are built.
Plain PyTorch in float32 with the kernels' test: a row is skipped when the squared distance from its
nearest center to the new one is >= 4 (1 + delta) times its own, delta = 4 (d + 2) eps.
Prints per data set the skipped fraction over all picks and over the second half, and what that
means in bytes per pick for bf16 rows (skipped rows cost the 8 bytes of the test instead of 2d).

    python benchmarks/ops/kcenter_skip_fraction.py [--rows 100000] [--dim 512] [--labeled 1000] [--picks 1000]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from data import clustered, cifar_resnet18, gaussian  # noqa: E402


def skip_fractions(x: torch.Tensor, n_labeled: int, picks: int, seed: int = 0) -> list[float]:
    n, d = x.shape
    one_plus_delta = 1 + 4 * (d + 2) * torch.finfo(torch.float32).eps
    sq = (x * x).sum(1)
    labeled = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_labeled]
    centers = labeled.tolist()
    min_d2 = torch.full((n,), float("inf"))
    assign = torch.full((n,), -1, dtype=torch.long)
    for start in range(0, n_labeled, 256):  # nearest labeled center, in blocks of centers
        block = labeled[start:start + 256]
        d2 = (sq[:, None] + sq[block][None, :] - 2 * x @ x[block].T).clamp_min(0)
        best, which = d2.min(1)
        better = best < min_d2
        min_d2 = torch.where(better, best, min_d2)
        assign = torch.where(better, which + start, assign)
    eligible = torch.ones(n, dtype=torch.bool)
    eligible[labeled] = False
    fractions = []
    for _ in range(picks):
        c = int(torch.where(eligible, min_d2, float("-inf")).argmax())
        eligible[c] = False
        m = len(centers)
        centers.append(c)
        if m:
            cx = x[torch.tensor(centers[:m])]
            center_d2 = ((cx - x[c]) ** 2).sum(1)
            gathered = torch.where(assign >= 0, center_d2[assign.clamp_min(0)], torch.zeros(()))
            needed = (assign < 0) | (gathered < 4 * min_d2 * one_plus_delta)
            fractions.append(1 - needed.float().mean().item())
        d2 = (sq + sq[c] - 2 * torch.mv(x, x[c])).clamp_min(0)
        d2[c] = 0
        better = d2 < min_d2
        min_d2 = torch.where(better, d2, min_d2)
        assign = torch.where(better, torch.tensor(m), assign)
    return fractions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--picks", type=int, default=1000)
    args = parser.parse_args()
    n, d = args.rows, args.dim
    data = {"gaussian": lambda: gaussian(n, d), "clustered": lambda: clustered(n, d)[0]}
    if cifar_resnet18() is not None:
        data["cifar-resnet18"] = lambda: cifar_resnet18()[0].float()
    print(f"k-center pruning, L={args.labeled} labeled, {args.picks} picks; bytes per pick for bf16 rows "
          f"relative to one read of x (skipped rows cost 8 bytes, the center distances 2 d per center)")
    for name, make in data.items():
        x = make()
        rows, dim = x.shape
        f = skip_fractions(x, args.labeled, args.picks)
        mean, late = sum(f) / len(f), sum(f[len(f) // 2:]) / len(f[len(f) // 2:])
        centers = args.labeled + args.picks / 2
        byte_ratio = ((1 - mean) * 2 * dim + 8 + centers * 2 * dim / rows) / (2 * dim)
        print(f"{name:15s} N={rows} d={dim}: skipped {mean:.3f} of row reads (second half {late:.3f}); "
              f"bytes per pick {byte_ratio:.3f}x one read of x")


if __name__ == "__main__":
    main()
