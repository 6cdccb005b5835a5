"""How often BADGE's Cauchy-Schwarz test lets a pick's update skip a row's feature read
(csrc/cpu/badge_kmeanspp.cpp, mqnet_fast/ops/badge_kmeanspp_triton.py), on the GPU benchmark's data:
softmax(3 * Gaussian) probabilities with C=100 and Gaussian features with d=512. Plain PyTorch,
float32, D^2 sampling as in the op; prints the fraction averaged over picks 2..k.

    python benchmarks/ops/badge_skip_fraction.py [--rows 100000] [--picks 300]
"""
import argparse

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--picks", type=int, default=300)
    args = parser.parse_args()
    n, classes, dim = args.rows, 100, 512
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(n, classes, generator=g) * 3, 1)
    feats = torch.randn(n, dim, generator=g)
    a = torch.nn.functional.one_hot(probs.argmax(1), classes).float() - probs
    hnorm = feats.norm(dim=1)
    big_g = (a * a).sum(1) * hnorm ** 2
    slack = (2 * dim + classes + 32) * 2.0 ** -23
    d2 = torch.full((n,), float("inf"))
    c, skipped = int(big_g.argmax()), []
    for step in range(args.picks):
        ad = a @ a[c]
        reach = 2 * ad.abs() * hnorm * hnorm[c] * (1 + slack)
        lower = big_g + big_g[c] - reach - slack * (big_g + big_g[c] + reach)
        if step > 0:
            skipped.append(float((lower >= d2).float().mean()))
        dist = (big_g + big_g[c] - 2 * ad * (feats @ feats[c])).clamp_min(0)
        d2 = torch.minimum(d2, dist)
        d2[c] = 0
        cum = torch.cumsum(d2.double(), 0)
        c = int(torch.searchsorted(cum, torch.rand(1, generator=g, dtype=torch.float64) * cum[-1], right=True).clamp_max(n - 1))
    print(f"N={n} C={classes} d={dim}, picks 2..{args.picks}: feature reads skipped {sum(skipped) / len(skipped):.3f}")


if __name__ == "__main__":
    main()
