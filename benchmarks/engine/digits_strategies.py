"""One run per strategy on digits (split 4:6, noise 0.6, the digits defaults), 10 seeds: %IN of each
query and test accuracy per round, the class balance of the queried IN examples, the time per
phase, and each strategy's accuracy averaged over rounds paired against RANDOM and against the best
baseline (mean difference over seeds with its 95% t-interval); the table of docs/strategies.md.

    python benchmarks/engine/digits_strategies.py [--seeds 0,...,9] [--strategies all]
        [--run-dir runs/digits-strategies] [--out benchmarks/results/digits-strategies.md]
    python benchmarks/engine/digits_strategies.py --table-only --run-dir A,B   # one table from several

Rerunning resumes the runs (the run directory keeps them; the encoders are cached in it or in --cache-dir, so each
seed trains its CSI and SimCLR encoders once, inside the first select that needs them). Two
processes of one thread each (OMP_NUM_THREADS=1, each its own run directory and strategies) use
both cores of a 2-core machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from mqnet_fast.experiment import Experiment, ExperimentConfig
from mqnet_fast.strategies import STRATEGIES
from runs import paired, pct, phase_table, verified, write  # the script's folder is on sys.path

SETTING = dict(dataset="digits", noise=0.6, split="4:6")


def run(run_dir: Path, strategies: list[str], seeds: list[int], cache_dir: str | None = None,
        options: dict | None = None) -> None:
    for name in strategies:
        config = ExperimentConfig(**SETTING, strategies=[name], seeds=seeds, progress=False,
                                  cache_dir=cache_dir or str(run_dir / "cache"), options=options or {})
        tick = time.perf_counter()
        Experiment(config, run_dir).run()
        print(f"{name}: {time.perf_counter() - tick:.0f} s", flush=True)


def load(run_dirs: list[Path], strategies: list[str]) -> dict[str, dict[int, list[dict]]]:
    """Every strategy's verified runs by seed, labeled by name and the options in which they differ
    from the defaults (so CORESET's two centers rules, in two run directories, are two rows)."""
    from mqnet_fast.strategies import make_options

    out = {}
    for run_dir in run_dirs:  # rows in the order of the directories, then of `strategies`
        found = verified([run_dir])
        for name in strategies:
            defaults = dataclasses.asdict(make_options(name))
            for run in (run for run in found if run["strategy"] == name):
                changed = {k: v for k, v in run["options"].items() if defaults.get(k) != v}
                label = name + (" (" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else "")
                out.setdefault(label, {})[run["seed"]] = run["records"]
    return out


OPEN_SET = ("mqnet",)  # the method under test; every other strategy is a baseline


def tabulate(run_dirs: list[Path], strategies: list[str], seeds: list[int]) -> str:
    import torch

    found = load(run_dirs, strategies)
    runs = {name: r for name, r in found.items() if all(s in r and len(r[s]) == len(r[min(r)]) for s in seeds)}
    missing = sorted(set(found) - set(runs))
    rounds = min(len(runs[n][s]) for n in runs for s in seeds)
    names = list(runs)
    out = [f"digits, split 4:6, noise 0.6, the digits defaults (b = 20, 5 rounds, 300 iterations); seeds {seeds}; "
           f"mean ± std over seeds. Each strategy with its default options unless its name says otherwise. Times "
           f"with {torch.get_num_threads()} thread(s) per process (as this table was made)."
           + (f" Left out, not run on every seed: {', '.join(missing)}." if missing else ""), ""]
    head = "| round | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    out += ["%IN of each query set, per round:", "", head, rule]
    for r in range(rounds - 1):
        out.append(f"| {r} | " + " | ".join(pct([runs[n][s][r]["query_in_percent"] for s in seeds]) for n in names) + " |")
    out.append("| all | " + " | ".join(pct([np.mean([rec["query_in_percent"] for rec in runs[n][s][:rounds - 1]])
                                             for s in seeds]) for n in names) + " |")
    out += ["", "Test accuracy (%) per round (round R: the final labeled set):", "", head, rule]
    for r in range(rounds):
        out.append(f"| {r} | " + " | ".join(pct([100 * runs[n][s][r]["test_accuracy"] for s in seeds]) for n in names) + " |")
    out.append("| mean | " + " | ".join(pct([100 * np.mean([rec["test_accuracy"] for rec in runs[n][s][:rounds]])
                                             for s in seeds]) for n in names) + " |")
    mean_acc = {n: [np.mean([rec["test_accuracy"] for rec in runs[n][s][:rounds]]) for s in seeds] for n in names}
    baselines = [n for n in names if n.split()[0] not in OPEN_SET and n != "random"]
    best = max(baselines, key=lambda n: np.mean(mean_acc[n])) if baselines else None
    versus = [n for n in ("random", "conf", best) if n in runs and n is not None]
    versus = list(dict.fromkeys(versus))
    out += ["", f"Accuracy averaged over rounds 0-{rounds - 1}, paired over the {len(seeds)} seeds: mean difference "
            f"in points [95% t-interval] against RANDOM, CONF and the best baseline by that mean ({best}; chosen on "
            "these seeds, so its interval is optimistic). Round 0: the difference from RANDOM before any query. "
            "%IN > random: the query rounds whose mean %IN is above RANDOM's. Lowest later %IN: the lowest %IN of a "
            "query after the first, over seeds (0% IN queries: how many). Class balance: normalized entropy of the "
            "queried IN examples' classes (1 = every IN class alike, 0 = one class), mean over queries and seeds. "
            "Target recipe: the model every strategy trained.", "",
            "| strategy | mean accuracy | " + " | ".join(f"vs {v}" for v in versus) + " | round 0 | %IN > random | "
            "lowest later %IN (0% IN queries) | class balance | target recipe |",
            "|---" * (len(versus) + 7) + "|"]
    random_in = ([np.mean([runs["random"][s][r]["query_in_percent"] for s in seeds]) for r in range(rounds - 1)]
                 if "random" in runs else None)
    for n in names:
        balance = [rec.get("query_class_balance") for s in seeds for rec in runs[n][s][:rounds - 1]]
        balance = [b for b in balance if b is not None and b == b]
        recipes = sorted({rec.get("target_recipe", "?") for s in seeds for rec in runs[n][s]})
        vs = [paired(mean_acc[n], mean_acc[v]) if n != v else "-" for v in versus]
        round0 = (paired([runs[n][s][0]["test_accuracy"] for s in seeds],
                         [runs["random"][s][0]["test_accuracy"] for s in seeds]) if random_in and n != "random" else "-")
        mine_in = [np.mean([runs[n][s][r]["query_in_percent"] for s in seeds]) for r in range(rounds - 1)]
        above = f"{sum(a > b for a, b in zip(mine_in, random_in))} of {rounds - 1}" if random_in and n != "random" else "-"
        later = [runs[n][s][r]["query_in_percent"] for s in seeds for r in range(1, rounds - 1)]
        out.append(f"| {n} | {100 * np.mean(mean_acc[n]):.1f} | " + " | ".join(vs) + f" | {round0} | {above} | "
                   f"{min(later):.0f} ({sum(v == 0 for v in later)}) | "
                   f"{f'{np.mean(balance):.2f}' if balance else '-'} | {'+'.join(recipes)} |")
    out += ["", "Time per round (s), mean over rounds and seeds; select includes training a detector (lfosa, eoal, "
            "eaoa) and, in the first round of a seed, the encoders (mqnet, ccal: CSI; ccal: SimCLR too) unless "
            "the cache held them:", ""]
    out += phase_table([(n, [runs[n][s] for s in seeds]) for n in names])
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--strategies", default="all")
    parser.add_argument("--run-dir", default="runs/digits-strategies")
    parser.add_argument("--out", default="benchmarks/results/digits-strategies.md")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--cache-dir", help="the encoders' cache (default RUN_DIR/cache); several run directories "
                                            "of the same seeds can share one")
    parser.add_argument("--plot", help="also draw accuracy and %%IN per round (mean, band = min..max) to this PNG")
    parser.add_argument("--options", default="", help="strategy options, e.g. coreset_centers=in,eaoa_counts=raw")
    args = parser.parse_args()
    strategies = list(STRATEGIES) if args.strategies == "all" else args.strategies.split(",")
    run_dirs = [Path(p) for p in args.run_dir.split(",")]
    if not args.table_only:
        if len(run_dirs) != 1:
            raise SystemExit("--run-dir: give one directory to run in (several only with --table-only)")
        options = dict(item.split("=", 1) for item in args.options.split(",") if item)
        run(run_dirs[0], strategies, [int(s) for s in args.seeds.split(",")], args.cache_dir, options)
    write(args.out, tabulate(run_dirs, strategies, [int(s) for s in args.seeds.split(",")]))
    if args.plot:
        from mqnet_fast.report import _label_runs, collect_runs, plot

        seeds = {int(s) for s in args.seeds.split(",")}
        runs = [r for r in collect_runs(run_dirs) if r["strategy"] in strategies and r["seed"] in seeds]
        _label_runs(runs)
        print(plot(runs, Path(args.plot)))


if __name__ == "__main__":
    main()
