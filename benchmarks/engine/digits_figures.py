"""The digits figures of the README: runs MQ-Net (paper configuration, and with the published code's
exp-zscore standardization), RANDOM and CONF over 5 seeds with every purity score's AUROC recorded,
then tabulates per round: purity AUROC of knn / csi / csi-ood / csi-full / react (on MQ-Net's
candidates), %IN of each query, Phi's ranking accuracy, and accuracy averaged over rounds paired over
seeds, plus the time per phase.

    python benchmarks/engine/digits_figures.py [--seeds 0,1,2,3,4] [--run-dir runs/digits-figures]
        [--out benchmarks/results/digits-figures.md]

Rerunning resumes the runs (the run directories keep them).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from mqnet_fast.experiment import Experiment, ExperimentConfig
from mqnet_fast.scores import PURITY
from runs import by_seed, mean_std, pct, phase_table, verified, write  # the script's folder is on sys.path

SETTING = dict(dataset="digits", noise=0.6, split="4:6")


def run(run_dir: Path, seeds: list[int]) -> None:
    for sub, strategies, options in (("main", ["mqnet", "random", "conf"], {}),
                                     ("exp-zscore", ["mqnet"], {"standardize": "exp-zscore"})):
        config = ExperimentConfig(**SETTING, strategies=strategies, seeds=seeds, options=options,
                                  purity_diagnostics=sub == "main", progress=False,
                                  cache_dir=str(run_dir / "cache"))  # the encoder's training is timed once per seed
        tick = time.perf_counter()
        Experiment(config, run_dir / sub).run()
        print(f"{sub}: {time.perf_counter() - tick:.0f} s", flush=True)


def tabulate(run_dir: Path) -> str:
    mq, rnd, conf = (by_seed(run_dir / "main", s) for s in ("mqnet", "random", "conf"))
    mq_exp = by_seed(run_dir / "exp-zscore", "mqnet")
    options = next(run["options"] for run in verified([run_dir / "main"]) if run["strategy"] == "mqnet")
    seeds = sorted(mq)
    rounds = len(mq[seeds[0]])
    out = [f"digits, split 4:6, noise 0.6, seeds {seeds}; mean ± std over seeds "
           f"(mqnet = {options})", ""]

    out += ["Purity AUROC (IN vs OOD) on MQ-Net's candidates, per round:", "",
            "| round | " + " | ".join(PURITY) + " |", "|---" * (len(PURITY) + 1) + "|"]
    averages = defaultdict(list)
    for r in range(rounds - 1):
        cells = []
        for name in PURITY:
            values = [mq[s][r].get(f"auroc_{name}") for s in seeds]
            averages[name] += values
            cells.append(mean_std(values))
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    out.append("| mean | " + " | ".join(mean_std(averages[n]) for n in PURITY) + " |")

    out += ["", "%IN of each query set, per round:", "", "| round | mqnet | mqnet exp-zscore | random | conf |",
            "|---|---|---|---|---|"]
    for r in range(rounds - 1):
        cells = [pct([runs[s][r]["query_in_percent"] for s in seeds]) for runs in (mq, mq_exp, rnd, conf)]
        out.append(f"| {r} | " + " | ".join(cells) + " |")

    out += ["", "Test accuracy (%) per round:", "", "| round | mqnet | mqnet exp-zscore | random | conf |",
            "|---|---|---|---|---|"]
    for r in range(rounds):
        cells = [pct([100 * runs[s][r]["test_accuracy"] for s in seeds]) for runs in (mq, mq_exp, rnd, conf)]
        out.append(f"| {r} | " + " | ".join(cells) + " |")

    def avg_acc(runs, s):
        return 100 * np.mean([rec["test_accuracy"] for rec in runs[s]])

    out += ["", "Accuracy averaged over rounds 0..R (%), and paired differences over seeds:", ""]
    for label, runs in (("mqnet", mq), ("mqnet exp-zscore", mq_exp), ("random", rnd), ("conf", conf)):
        out.append(f"- {label}: {pct([avg_acc(runs, s) for s in seeds])}")
    for label, runs in (("random", rnd), ("conf", conf), ("mqnet exp-zscore", mq_exp)):
        diffs = [avg_acc(mq, s) - avg_acc(runs, s) for s in seeds]
        out.append(f"- mqnet - {label}: {pct(diffs)} points (per seed: {', '.join(f'{d:+.1f}' for d in diffs)})")

    out += ["", "Phi's ranking accuracy on its query set's pairs, per round (after meta-training):", "",
            "| round | mqnet | mqnet exp-zscore |", "|---|---|---|"]
    for r in range(rounds - 1):
        out.append(f"| {r} | {mean_std([mq[s][r].get('meta_rank_accuracy') for s in seeds])} | "
                   f"{mean_std([mq_exp[s][r].get('meta_rank_accuracy') for s in seeds])} |")

    out += ["", "Time per round (s), mean over rounds and seeds (mqnet's select includes the CSI encoder's "
            "training in the first round of each seed, unless a cached encoder was reused):", ""]
    out += phase_table([(label, [runs[s] for s in seeds]) for label, runs in (("mqnet", mq), ("random", rnd),
                                                                             ("conf", conf))])
    first = [mq[s][0]["time_select"] for s in seeds]
    out.append(f"\nmqnet's first-round select (encoder training + embedding): {pct(first)} s")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--run-dir", default="runs/digits-figures")
    parser.add_argument("--out", default="benchmarks/results/digits-figures.md")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    if not args.table_only:
        run(run_dir, [int(s) for s in args.seeds.split(",")])
    write(args.out, tabulate(run_dir))


if __name__ == "__main__":
    main()
