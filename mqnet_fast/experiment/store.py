"""The run store: the only code that writes to a run directory. Every file is written atomically.

    RUN_DIR/experiment.json                 the experiment's identity (dataset, split, noise, budget, ...)
    RUN_DIR/results.csv                     every round of every (strategy, seed) run
    RUN_DIR/<strategy>/seed<k>/checkpoint.pt   state to continue: labeled set, records, strategy state
    RUN_DIR/<strategy>/seed<k>/metrics.json    one record per round (also metrics.csv)
    RUN_DIR/<strategy>/seed<k>/queries.json    the global train indices queried each round
    RUN_DIR/<strategy>/seed<k>/config.json     the full configuration of the run, with the strategy's options
    RUN_DIR/<strategy>/seed<k>/scores/round_RRR.npz   per-candidate scores of each query
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from mqnet_fast.experiment.config import IDENTITY, ConfigError
from mqnet_fast.io import atomic_save_npz, atomic_torch_save, atomic_write_json, atomic_write_text, read_json


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def check_experiment(self, identity: dict) -> None:
        """Refuse a run directory that holds another experiment; record this one in a new directory."""
        saved = self.run_dir / "experiment.json"
        if saved.exists():
            previous = read_json(saved)
            differs = [k for k in IDENTITY if previous.get(k) != identity[k]]
            if differs:
                detail = ", ".join(f"{k}: {previous.get(k)!r} there, {identity[k]!r} now" for k in differs)
                raise ConfigError(f"run directory {str(self.run_dir)!r} holds a different experiment ({detail}); "
                                  "use another --run-dir or the same options to resume it")
        else:
            atomic_write_json(saved, identity)

    def run(self, strategy: str, seed: int) -> "SingleRun":
        return SingleRun(self, self.run_dir / strategy / f"seed{seed}")

    def write_results(self) -> None:
        all_records = []
        for path in sorted(self.run_dir.glob("*/seed*/metrics.json")):
            all_records += read_json(path)
        atomic_write_text(self.run_dir / "results.csv", records_to_csv(all_records))


class SingleRun:
    """The files of one (strategy, seed) run."""

    def __init__(self, store: RunStore, path: Path):
        self.store, self.path = store, path
        self.checkpoint_path = path / "checkpoint.pt"

    def check_options(self, options: dict) -> None:
        """Refuse to resume a run made with other strategy options."""
        saved = self.path / "config.json"
        if saved.exists() and self.checkpoint_path.exists():
            previous = read_json(saved).get("strategy_options")
            if previous is not None and previous != options:
                raise ConfigError(f"run {str(self.path)!r} was made with strategy options {previous}, not "
                                  f"{options}; use another --run-dir or the same options")

    def write_config(self, config: dict) -> None:
        """Write the run's configuration (after check_options)."""
        self.check_options(config["strategy_options"])
        atomic_write_json(self.path / "config.json", config)

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, weights_only=False)

    def save_round(self, state: dict) -> None:
        """Checkpoint, then the outputs that mirror it (metrics, queries, results.csv)."""
        atomic_torch_save(self.checkpoint_path, state)
        atomic_write_json(self.path / "metrics.json", state["records"])
        atomic_write_text(self.path / "metrics.csv", records_to_csv(state["records"]))
        atomic_write_json(self.path / "queries.json", state["queries"])
        self.store.write_results()

    def save_scores(self, r: int, **arrays: np.ndarray) -> None:
        atomic_save_npz(self.path / "scores" / f"round_{r:03d}.npz", **arrays)


def records_to_csv(records: list[dict]) -> str:
    columns = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
