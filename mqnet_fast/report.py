"""Reports over run directories: a PNG plot (test accuracy and %IN of each query over rounds, one line
per strategy, mean and spread over seeds) and a table of last-round accuracy laid out like the
paper's tables (strategies as rows, noise ratios as columns), as markdown and CSV."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from mqnet_fast.io import atomic_write_text, read_json
from mqnet_fast.experiment import records_to_csv


def collect_records(run_dirs) -> list[dict]:
    """Every round record under the run directories (RUN_DIR/<strategy>/seed<k>/metrics.json)."""
    records = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
        paths = sorted(run_dir.glob("*/seed*/metrics.json"))
        if not paths:
            raise FileNotFoundError(f"run directory {str(run_dir)!r} holds no results (*/seed*/metrics.json)")
        for path in paths:
            records += read_json(path)
    return records


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarize(records: list[dict]) -> list[dict]:
    """One row per (dataset, split, noise, strategy): last-round test accuracy (mean, std over
    seeds), %IN over all queries, number of seeds and rounds. Only runs that reached the setting's
    last round count."""
    by_run = defaultdict(list)
    for rec in records:
        by_run[(rec["dataset"], rec["split"], rec["noise"], rec["strategy"], rec["seed"])].append(rec)
    last_round = defaultdict(int)
    for (dataset, split, noise, _, _), recs in by_run.items():
        key = (dataset, split, noise)
        last_round[key] = max(last_round[key], max(r["round"] for r in recs))
    groups = defaultdict(list)
    for (dataset, split, noise, strategy, seed), recs in by_run.items():
        final = [r for r in recs if r["round"] == last_round[(dataset, split, noise)]]
        if final:
            groups[(dataset, split, noise, strategy)].append((final[0], recs))
    rows = []
    for (dataset, split, noise, strategy), runs in sorted(groups.items()):
        acc_mean, acc_std = _mean_std([final["test_accuracy"] for final, _ in runs])
        queried_in = sum(r.get("query_in") or 0 for _, recs in runs for r in recs)
        queried = sum((r.get("query_in") or 0) + (r.get("query_ood") or 0) for _, recs in runs for r in recs)
        rows.append({"dataset": dataset, "split": split, "noise": noise, "strategy": strategy,
                     "seeds": len(runs), "last_round": last_round[(dataset, split, noise)],
                     "accuracy_mean": acc_mean, "accuracy_std": acc_std,
                     "query_in_percent": 100.0 * queried_in / queried if queried else float("nan")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Last-round accuracy (%) as mean±std over seeds, strategies as rows, one column per
    (dataset, noise); %IN of all queries in brackets."""
    columns = sorted({(r["dataset"], r["split"], r["noise"]) for r in rows})
    strategies = sorted({r["strategy"] for r in rows}, key=lambda s: (s != "mqnet", s))
    cell = {(r["dataset"], r["split"], r["noise"], r["strategy"]): r for r in rows}
    header = "| strategy | " + " | ".join(f"{d} {s} noise {n:g}" for d, s, n in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for strategy in strategies:
        cells = []
        for column in columns:
            r = cell.get((*column, strategy))
            if r is None:
                cells.append("")
            else:
                spread = f"±{100 * r['accuracy_std']:.1f}" if r["seeds"] > 1 else ""
                cells.append(f"{100 * r['accuracy_mean']:.1f}{spread} ({r['query_in_percent']:.0f}% IN)")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> Path:
    """Test accuracy and %IN of each query set per round, one line per strategy (mean over seeds,
    band = min..max), one row of panels per (dataset, split, noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["dataset"], r["split"], r["noise"]) for r in records})
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.8 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        recs = [r for r in records if (r["dataset"], r["split"], r["noise"]) == setting]
        for strategy in sorted({r["strategy"] for r in recs}, key=lambda s: (s != "mqnet", s)):
            mine = [r for r in recs if r["strategy"] == strategy]
            for col, (key, scale, label) in enumerate((("test_accuracy", 100.0, "test accuracy (%)"),
                                                       ("query_in_percent", 1.0, "IN in query set (%)"))):
                by_round = defaultdict(list)
                for r in mine:
                    value = r.get(key)
                    if value is not None and not (isinstance(value, float) and math.isnan(value)):
                        by_round[r["round"]].append(scale * value)
                rounds = sorted(by_round)
                if not rounds:
                    continue
                mean = [sum(by_round[x]) / len(by_round[x]) for x in rounds]
                ax = axes[row][col]
                style = dict(lw=2.5) if strategy == "mqnet" else dict(lw=1.3)
                line, = ax.plot(rounds, mean, marker="o", ms=3, label=strategy, **style)
                if any(len(by_round[x]) > 1 for x in rounds):
                    ax.fill_between(rounds, [min(by_round[x]) for x in rounds], [max(by_round[x]) for x in rounds],
                                    color=line.get_color(), alpha=0.15)
                ax.set_xlabel("round")
                ax.set_ylabel(label)
                ax.set_title(f"{setting[0]}, split {setting[1]}, noise {setting[2]:g}")
                ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(run_dirs, out_dir=None) -> dict:
    """Writes report.png, report.md and report.csv (one row per setting and strategy) into out_dir
    (default: the first run directory). Returns the paths and the markdown table."""
    records = collect_records(run_dirs)
    out = Path(out_dir if out_dir is not None else run_dirs[0])
    rows = summarize(records)
    table = markdown_table(rows)
    note = ("Last-round test accuracy (%) on the IN test classes, mean±std over seeds where there are "
            "several; in brackets the share of IN examples among all queried examples.\n")
    atomic_write_text(out / "report.md", "# mqnet-fast report\n\n" + note + "\n" + table)
    atomic_write_text(out / "report.csv", records_to_csv(rows))
    png = plot(records, out / "report.png")
    return {"table": table, "markdown": out / "report.md", "csv": out / "report.csv", "plot": png}
