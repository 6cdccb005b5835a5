"""ops.fl_gains against its reference, and SIMILAR's lazy FLCMI greedy against the plain greedy, in
one run (ratios; the machine is shared and noisy).

    python benchmarks/ops/fl_gains_bench.py [--n 20000] [--m 2048] [--d 128] [--budget 100]
        [--out benchmarks/results/fl-gains-cpu.txt]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mqnet_fast import ops
from mqnet_fast.strategies.similar import Factors, flcmi_greedy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--m", type=int, default=2048)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/fl-gains-cpu.txt")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    ground = F.normalize(torch.rand(args.n, args.d, generator=g), dim=1)
    lo = torch.rand(args.n, generator=g) * 0.5
    hi = lo + 0.3
    cand = ground[: args.m]
    lines = [f"threads {torch.get_num_threads()}; ground {args.n} x {args.d}, {args.m} candidates, float32"]
    times = {b: best_of(lambda b=b: ops.fl_gains(ground, cand, lo, hi, backend=b)) for b in ("torch", "cpp")}
    lines.append(f"fl_gains: torch {times['torch'] * 1e3:.1f} ms, cpp {times['cpp'] * 1e3:.1f} ms "
                 f"({times['torch'] / times['cpp']:.2f}x)")
    queries = Factors([ground[:200]])
    privates = Factors([ground[200:300]])
    pool = Factors([ground[300:]])
    tick = time.perf_counter()
    picks, _, evaluated = flcmi_greedy(pool, queries, privates, args.budget, 1.0, 1.0)
    lazy = time.perf_counter() - tick
    plain = len(pool) * args.budget
    lines.append(f"FLCMI greedy, {len(pool)} candidates, b = {args.budget}: {lazy:.2f} s, {evaluated} gains evaluated "
                 f"(plain greedy: {plain}, {plain / evaluated:.1f}x more)")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
