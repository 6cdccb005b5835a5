"""What learning loss's module costs the target model before any query (round 0: every strategy the
same labeled set), with batches filled with repeats ("fill") and with batches of distinct examples
("distinct"): RANDOM's model against LL's on each seed, paired, on digits (split 4:6, noise 0.6).

    python benchmarks/engine/digits_loss_module_cost.py [--seeds 0-9] [--run-dir runs/loss-module-cost]
        [--out benchmarks/results/digits-loss-module-cost.md]

Rerunning resumes. One thread (OMP_NUM_THREADS=1) per process is how it was measured.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mqnet_fast.experiment import Experiment, ExperimentConfig
from runs import by_seed, paired, write  # the script's folder is on sys.path


def accuracies(run_dir: Path, strategy: str, seeds) -> np.ndarray:
    """Round 0's test accuracy of `strategy`'s verified run on each seed."""
    runs = by_seed(run_dir, strategy)
    return np.array([runs[s][0]["test_accuracy"] for s in seeds])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--run-dir", default="runs/loss-module-cost")
    parser.add_argument("--out", default="benchmarks/results/digits-loss-module-cost.md")
    args = parser.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    seeds = list(range(first, last + 1))
    acc = {}
    for batching in ("fill", "distinct"):
        run_dir = Path(args.run_dir) / batching
        # loss_module "auto": RANDOM's model without the module, LL's with it (under "all" both carry it)
        config = ExperimentConfig(dataset="digits", noise=0.6, split="4:6", rounds=0, strategies=["random", "ll"],
                                  seeds=seeds, batching=batching, loss_module="auto", progress=False)
        Experiment(config, run_dir).run()
        acc[batching] = {s: accuracies(run_dir, s, seeds) for s in ("random", "ll")}
    out = [f"digits, split 4:6, noise 0.6, round 0 (the initial labeled set), seeds {first}-{last}; test accuracy (%) "
           "mean, and paired differences over the seeds with their 95% t-interval "
           "(benchmarks/engine/digits_loss_module_cost.py).", "",
           "| batching | RANDOM's model | LL's model (with the module) | module's cost (LL - RANDOM) |",
           "|---|---|---|---|"]
    for batching, a in acc.items():
        out.append(f"| {batching} | {100 * a['random'].mean():.1f} | {100 * a['ll'].mean():.1f} | "
                   f"{paired(a['ll'], a['random'])} |")
    out += ["", f"distinct - fill, RANDOM's model: {paired(acc['distinct']['random'], acc['fill']['random'])}; "
            f"LL's model: {paired(acc['distinct']['ll'], acc['fill']['ll'])}"]
    write(args.out, "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
