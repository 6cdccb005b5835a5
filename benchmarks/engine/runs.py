"""What the engine benchmarks read of their run directories, and the cells and tables they print.

The records come from mqnet_fast.report.collect_runs: the sealed checkpoints of the runs that verify
for their directory's experiment, never the metrics.json or results.csv mirrors (outputs the engine
does not read back, which an edit or a copy from another experiment would change unseen). A run left
out is named on stderr."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

PHASES = ("time_train", "time_eval", "time_infer", "time_select", "time_meta")


@lru_cache(maxsize=None)
def _verified(run_dir: Path) -> tuple:
    from mqnet_fast.report import collect_runs

    skipped = []
    runs = collect_runs([run_dir], skipped)
    for path, why in skipped:
        print(f"left out {path}: {why}", file=sys.stderr)
    return tuple(sorted(runs, key=lambda run: (run["strategy"], run["seed"])))


def verified(run_dirs) -> list[dict]:
    """Every verified run of the run directories (collect_runs' dicts: "setting", "strategy",
    "options", "seed", "records", "path"), by strategy then seed; a directory that does not exist or
    holds no run gives none."""
    return [run for d in run_dirs if Path(d).is_dir() and any(Path(d).glob("*/seed*/checkpoint.pt"))
            for run in _verified(Path(d).resolve())]


def by_seed(run_dir: Path, strategy: str) -> dict[int, list[dict]]:
    """{seed: records} of `strategy`'s verified runs in `run_dir`."""
    return {run["seed"]: run["records"] for run in verified([run_dir]) if run["strategy"] == strategy}


def pct(values) -> str:
    """'mean ± sample std' of the values that are not NaN, to one decimal; '-' where none is."""
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"


def mean_std(values) -> str:
    """As pct, to three decimals, leaving out None too."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def paired(a: list[float], b: list[float]) -> str:
    """mean of a - b over seeds with its 95% t-interval, in points."""
    from scipy import stats

    d = 100 * (np.asarray(a) - np.asarray(b))
    if len(d) < 2:
        return f"{d.mean():+.1f}"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return f"{d.mean():+.1f} [{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"


def phase_table(rows: list[tuple[str, list[list[dict]]]]) -> list[str]:
    """The lines of a markdown table of the mean time per round of each phase (PHASES), one row per
    (label, the records of each of its seeds), over every round that recorded the phase."""
    lines = ["| strategy | " + " | ".join(p[5:] for p in PHASES) + " |", "|---" * (len(PHASES) + 1) + "|"]
    for label, runs in rows:
        cells = []
        for p in PHASES:
            values = [rec[p] for records in runs for rec in records if p in rec]
            cells.append(f"{np.mean(values):.2f}" if values else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write(path, text: str) -> None:
    """`text` to `path` (its folder made if needed), and to stdout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
