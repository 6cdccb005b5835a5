"""The fidelity report of a run directory: test accuracy and %IN of each query per round and strategy
(mean over seeds), beside the paper's CIFAR-10 numbers (Park et al., NeurIPS 2022, 4:6 split, 500 per
round, 10 rounds, 20,000 iterations per round): Table 10's last-round accuracy and Table 8's %IN of
the first and the last query at 60% noise. A reduced schedule is not the paper's, so the comparison
is of the ordering of the strategies and of the trend of %IN, not of the values.

    python benchmarks/engine/fidelity_report.py RUN_DIR [RUN_DIR ...] [--out REPORT.md]

Several run directories of the same experiment (e.g. strategies run as separate processes) are
read as one.
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from runs import verified  # the script's folder is on sys.path

# Table 10: last-round test accuracy (%) on CIFAR-10, by noise ratio
TABLE10 = {0.6: {"mqnet": 89.51, "ccal": 87.49, "ll": 86.95, "badge": 86.83, "coreset": 86.50, "random": 85.64,
                 "conf": 85.43},
           0.4: {"mqnet": 91.48, "ll": 89.41, "badge": 89.27, "coreset": 89.12, "conf": 88.69, "random": 87.73}}
# Table 8: %IN of the query at 60% noise, (first round, last round)
TABLE8 = {"mqnet": (82.8, 35.6), "conf": (37.4, 16.3)}


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def load(run_dirs: list[Path]) -> tuple[dict, dict, dict]:
    """(experiment identity, {strategy: {round: [accuracy per seed]}}, {strategy: {round: [%IN per seed]}}),
    from the records of the verified runs (runs.verified)."""
    found = verified(run_dirs)
    if not found:
        raise SystemExit(f"no verified run in {', '.join(map(str, run_dirs))}")
    identities = [run["setting"] for run in found]
    if any(i != identities[0] for i in identities):
        raise SystemExit("the run directories hold different experiments")
    accuracy, percent_in = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    for run in found:
        for record in run["records"]:
            r = int(record["round"])
            accuracy[run["strategy"]][r].append(100.0 * _number(record["test_accuracy"]))
            if record.get("query_in_percent") is not None:  # the last round has no query
                percent_in[run["strategy"]][r].append(_number(record["query_in_percent"]))
    return identities[0], accuracy, percent_in


def render(run_dirs: list[Path], device: str = "") -> str:
    identity, accuracy, percent_in = load(run_dirs)
    noise = float(identity["noise"])
    rounds = max(max(a) for a in accuracy.values())
    # ranked at the last round every strategy reached (a run stopped early is marked, not compared later)
    common = min(max(a) for a in accuracy.values())
    strategies = sorted(accuracy, key=lambda s: (math.isnan(_mean(accuracy[s][common])), -_mean(accuracy[s][common]), s))
    lines = [f"# Fidelity run: {identity['dataset']}, split {identity['split']}, noise {noise}",
             "",
             f"Schedule: {identity['rounds']} rounds of {identity['budget']}, {identity['iterations']} iterations per "
             f"round, batch {identity['batch_size']}, CSI encoder {identity.get('encoder_epochs')} epochs"
             + (f"; device: {device}" if device else "") + ". The paper: 10 rounds of 500, 20,000 iterations, "
             "1,000 encoder epochs.", "",
             "## Test accuracy (%) per round (mean over seeds)", "",
             "| strategy | " + " | ".join(f"r{r}" for r in range(rounds + 1)) + " | paper, last round (Table 10) |",
             "|---|" + "---|" * (rounds + 2)]
    paper = TABLE10.get(noise, {})
    for s in strategies:
        cells = [f"{_mean(accuracy[s][r]):.2f}" if r in accuracy[s] else "" for r in range(rounds + 1)]
        done = "" if max(accuracy[s]) == rounds else f" (stopped after r{max(accuracy[s])})"
        lines.append(f"| {s}{done} | " + " | ".join(cells) + f" | {paper.get(s, '')} |")
    lines += ["", "## %IN of each query (mean over seeds)", "",
              "| strategy | " + " | ".join(f"q{r + 1}" for r in range(rounds)) + " | paper, first / last (Table 8, 60%) |",
              "|---|" + "---|" * (rounds + 1)]
    for s in strategies:
        cells = [f"{_mean(percent_in[s][r]):.1f}" if r in percent_in[s] else "" for r in range(rounds)]
        ref = TABLE8.get(s) if noise == 0.6 else None
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {f'{ref[0]} / {ref[1]}' if ref else ''} |")
    order = " > ".join(strategies)
    paper_order = " > ".join(s for s, _ in sorted(paper.items(), key=lambda kv: -kv[1]) if s in accuracy)
    lines += ["", f"Order here at round {common} (the last every strategy reached): {order}.",
              f"The paper's order of the same strategies (last round): {paper_order}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="", help="the device's name, for the report's header")
    args = parser.parse_args()
    text = render(args.run_dirs, args.device)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
