"""Is the materialized BADGE baseline's time linear in its picks, and what did the one-off norm pass
add? The README's BADGE speedups time the baseline (benchmarks/ops/test_bench_badge.py) on a few of the
k = 1,000 picks and extrapolate linearly (benchmarks/ops/report.py). That is sound when a pick costs the
same at pick 10 as at pick 100, and when one-off work is not timed with the picks: the norms of the
embedding's rows, one pass over it, once were. This times, on one pool and interleaved (so that a
change in the load of a shared machine hits all alike), the norm pass and the pick loop with few and
with many picks, and prints the medians.

    python benchmarks/ops/badge_baseline_per_pick.py [--classes 10] [--picks 10 100] [--repeats 3]

C=10 is the 1 GB embedding of N=50,000, d=512; at C=100 it is 10 GB.
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from data import gaussian  # noqa: E402
from test_bench_badge import D, N, embedding_norms, materialize, materialized_picks  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # benchmarks/timing.py
from timing import seconds as _seconds  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--picks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    probs, feats = torch.softmax(gaussian(N, args.classes, seed=1), 1), gaussian(N, D)
    emb = materialize(probs, feats)
    norms = embedding_norms(emb)
    norm_pass, per_pick = [], {p: [] for p in args.picks}
    for _ in range(args.repeats):
        norm_pass.append(_seconds(lambda: embedding_norms(emb)))
        for picks in args.picks:
            per_pick[picks].append(_seconds(lambda: materialized_picks(emb, norms, picks, torch.Generator().manual_seed(0)))
                                   / picks)
    pick = statistics.median(per_pick[max(args.picks)])
    print(f"gaussian N={N} d={D} C={args.classes}, {torch.get_num_threads()} threads, median of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"  norm pass: {statistics.median(norm_pass) * 1e3:.0f} ms = {statistics.median(norm_pass) / pick:.1f} picks")
    for picks, times in per_pick.items():
        print(f"  {picks:4d} picks: {statistics.median(times) * 1e3:.1f} ms per pick")


if __name__ == "__main__":
    main()
