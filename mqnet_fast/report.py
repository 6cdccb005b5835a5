"""Reports over run directories: a PNG plot (test accuracy and %IN of each query over rounds, one line
per strategy, mean and spread over seeds) and a table of last-round accuracy laid out like the
paper's tables (strategies as rows, settings such as noise ratios as columns), as markdown and CSV.

Runs are grouped by their experiment's full identity (RUN_DIR/experiment.json: dataset, split,
noise, budget, rounds, iterations, ...) and their strategy's options: runs that differ in any of
them get separate columns or rows, labeled by what differs. Only runs whose checkpoint verifies
(sealed by that experiment, for that strategy, options and seed) are read; the others are listed
with the reason they were left out."""
from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path

from mqnet_fast.io import atomic_write_bytes, atomic_write_text
from mqnet_fast.experiment import ConfigError, records_to_csv


def collect_runs(run_dirs, skipped: list | None = None) -> list[dict]:
    """Every (strategy, seed) run under the run directories whose checkpoint verifies
    (RUN_DIR/<strategy>/seed<k>/checkpoint.pt, sealed for the experiment in RUN_DIR/experiment.json),
    each as {"setting": the experiment's identity, "strategy", "options": the strategy's options,
    "seed", "records", "path"}. The records come from the checkpoints, never from metrics.json (an
    output the engine does not read back). Each run left out is appended to `skipped` as (path, why).
    A run reached twice (the same directory given twice, or through a link) counts once; two
    different directories holding the same run (same setting, strategy, options and seed) are
    refused: they would count one seed twice."""
    from mqnet_fast.experiment.store import RunStore

    runs, seen, left_out = [], set(), []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
        store = RunStore(run_dir, writes=False)
        found, skipped_here = store.verified_runs()
        left_out += skipped_here
        if not found and not skipped_here:
            raise FileNotFoundError(f"run directory {str(run_dir)!r} holds no results (*/seed*/checkpoint.pt)")
        setting = store.saved_experiment() if found else None
        for run in found:
            real = run["path"].resolve()
            if real in seen or not run["records"]:
                continue
            seen.add(real)
            runs.append({**run, "setting": setting})
    if skipped is not None:
        skipped += left_out
    if not runs:
        why = "; ".join(f"{str(path)!r}: {reason}" for path, reason in left_out)
        raise ConfigError(f"no run in {', '.join(map(str, run_dirs))} verifies ({why})")
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _freeze(d: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def _differing(dicts: list[dict]) -> list[str]:
    """The keys whose values are not the same in all `dicts` (in first-seen order)."""
    keys = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return [k for k in keys if len({repr(d.get(k)) for d in dicts}) > 1]


def _label_runs(runs: list[dict]) -> None:
    """Give each run a setting key and label and a method label that tell apart everything that
    differs. Settings are compared on the identity fields every run directory records (those from
    before a field was kept lack it) and labeled by dataset, split and noise plus any other of those
    fields that differs between them; methods by strategy plus the options that differ between that
    strategy's runs."""
    common = set.intersection(*(set(r["setting"]) for r in runs)) if runs else set()
    owner = {}
    for run in runs:
        run["setting_key"] = _freeze({k: v for k, v in run["setting"].items() if k in common})
        key = (run["setting_key"], run["strategy"], _freeze(run["options"]), run["seed"])
        if key in owner:
            raise ConfigError(f"runs {str(owner[key])!r} and {str(run['path'])!r} are the same run (strategy "
                              f"{run['strategy']}, seed {run['seed']}, the same experiment and options): "
                              "report one of them")
        owner[key] = run["path"]
    settings = list({r["setting_key"]: {k: v for k, v in r["setting"].items() if k in common} for r in runs}.items())
    extra = [k for k in _differing([st for _, st in settings]) if k not in ("dataset", "split", "noise")]
    labels = {}
    for key, st in settings:
        label = f"{st.get('dataset')} {st.get('split')} noise {st.get('noise'):g}"
        label = " ".join([label] + [f"{k} {st.get(k)}" for k in extra])
        while label in labels.values():  # printed alike (e.g. noise 0.6 and 0.6000001): keep them apart
            label += "'"
        labels[key] = label
    for run in runs:
        run["setting_label"] = labels[run["setting_key"]]
    for strategy in {r["strategy"] for r in runs}:
        mine = [r for r in runs if r["strategy"] == strategy]
        differ = _differing([r["options"] for r in mine])
        for run in mine:
            details = ", ".join(f"{k}={run['options'].get(k)}" for k in differ)
            run["method"] = f"{strategy} ({details})" if details else strategy


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (setting, method): last-round test accuracy (mean, std over seeds), %IN over
    all queries, number of seeds and rounds. Only runs that reached the setting's last round count;
    runs of different experiments (any identity field) or options never share a row."""
    _label_runs(runs)
    last_round = defaultdict(int)
    for run in runs:
        last_round[run["setting_key"]] = max(last_round[run["setting_key"]], max(r["round"] for r in run["records"]))
    groups = defaultdict(list)
    for run in runs:
        final = [r for r in run["records"] if r["round"] == last_round[run["setting_key"]]]
        if final:
            groups[(run["setting_label"], run["method"])].append((final[0], run["records"], run["setting"]))
    rows = []
    for (setting, method), members in sorted(groups.items()):
        acc_mean, acc_std = _mean_std([final["test_accuracy"] for final, _, _ in members])
        queried_in = sum(r.get("query_in") or 0 for _, recs, _ in members for r in recs)
        queried = sum((r.get("query_in") or 0) + (r.get("query_ood") or 0) for _, recs, _ in members for r in recs)
        identity = members[0][2]
        balances = [r["query_class_balance"] for _, recs, _ in members for r in recs
                    if r.get("query_class_balance") is not None and r["query_class_balance"] == r["query_class_balance"]]
        recipes = sorted({r["target_recipe"] for _, recs, _ in members for r in recs if "target_recipe" in r})
        rows.append({"setting": setting, "dataset": identity.get("dataset"), "split": identity.get("split"),
                     "target_recipe": "+".join(recipes) if recipes else "",
                     "query_class_balance": sum(balances) / len(balances) if balances else float("nan"),
                     "noise": identity.get("noise"), "strategy": method, "seeds": len(members),
                     "last_round": max(final["round"] for final, _, _ in members), "accuracy_mean": acc_mean,
                     "accuracy_std": acc_std,
                     "query_in_percent": 100.0 * queried_in / queried if queried else float("nan")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Last-round accuracy (%) as mean±std over seeds, methods as rows, one column per setting;
    %IN of all queries in brackets."""
    columns = sorted({r["setting"] for r in rows})
    methods = sorted({r["strategy"] for r in rows}, key=lambda s: (not s.startswith("mqnet"), s))
    cell = {(r["setting"], r["strategy"]): r for r in rows}
    header = "| strategy | " + " | ".join(columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        cells = []
        for column in columns:
            r = cell.get((column, method))
            if r is None:
                cells.append("")
            else:
                spread = f"±{100 * r['accuracy_std']:.1f}" if r["seeds"] > 1 else ""
                cells.append(f"{100 * r['accuracy_mean']:.1f}{spread} ({r['query_in_percent']:.0f}% IN)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for column in columns:
        recipes = {r["strategy"]: r["target_recipe"] for r in rows if r["setting"] == column and r["target_recipe"]}
        if len(set(recipes.values())) > 1:
            lines.append("")
            lines.append(f"Not equal models in {column}: the strategies trained different target recipes ("
                         + "; ".join(f"{m}: {recipe}" for m, recipe in sorted(recipes.items())) + "); "
                         "rerun with --loss-module all to compare them on equal models.")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> Path:
    """Test accuracy and %IN of each query set per round, one line per method (mean over seeds,
    band = min..max where a panel has at most 6 methods), one row of panels per setting (runs
    labeled by summarize)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (MaxNLocator below)

    settings = sorted({run["setting_label"] for run in runs})
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.8 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        recs = [dict(r, strategy=run["method"]) for run in runs if run["setting_label"] == setting
                for r in run["records"]]
        methods = sorted({r["strategy"] for r in recs}, key=lambda s: (not s.startswith("mqnet"), s))
        many = len(methods) > 6  # no min..max bands (they would cover each other), 20 distinct colours
        for number, strategy in enumerate(methods):
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
                style = dict(lw=2.5) if strategy.startswith("mqnet") else dict(lw=1.3)
                if many:
                    style["color"] = plt.cm.tab20(number % 20)
                line, = ax.plot(rounds, mean, marker="o", ms=3, label=strategy, **style)
                if not many and any(len(by_round[x]) > 1 for x in rounds):
                    ax.fill_between(rounds, [min(by_round[x]) for x in rounds], [max(by_round[x]) for x in rounds],
                                    color=line.get_color(), alpha=0.15)
                ax.set_xlabel("round")
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.set_ylabel(label)
                ax.set_title(setting)
                ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7 if many else 8, ncol=2 if many else 1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_report(run_dirs, out_dir=None) -> dict:
    """Writes report.png, report.md and report.csv (one row per setting and strategy) into out_dir
    (default: the first run directory). Returns the paths and the markdown table."""
    skipped = []
    runs = collect_runs(run_dirs, skipped)
    out = Path(out_dir if out_dir is not None else run_dirs[0])
    rows = summarize(runs)
    table = markdown_table(rows)
    note = ("Last-round test accuracy (%) on the IN test classes, mean±std over seeds where there are "
            "several; in brackets the share of IN examples among all queried examples.\n")
    left_out = "".join(f"\n- {path}: {why}" for path, why in skipped)
    left_out = f"\nRuns left out (their files do not verify):{left_out}\n" if skipped else ""
    atomic_write_text(out / "report.md", "# mqnet-fast report\n\n" + note + "\n" + table + left_out)
    atomic_write_text(out / "report.csv", records_to_csv(rows))
    png = plot(runs, out / "report.png")
    return {"table": table, "markdown": out / "report.md", "csv": out / "report.csv", "plot": png,
            "skipped": skipped}
