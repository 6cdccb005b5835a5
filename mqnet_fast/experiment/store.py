"""The run store: the only code that writes to a run directory. Every file is written atomically.

    RUN_DIR/experiment.json                 the experiment's identity (dataset, split, noise, budget, ...)
    RUN_DIR/results.csv                     every round of every (strategy, seed) run
    RUN_DIR/round0/seed<k>/<recipe>.pt      the round-0 target model of seed k (shared by its strategies)
    RUN_DIR/<strategy>/seed<k>/checkpoint.pt   state to continue: labeled set, records, strategy state
    RUN_DIR/<strategy>/seed<k>/metrics.json    one record per round (also metrics.csv)
    RUN_DIR/<strategy>/seed<k>/queries.json    the global train indices queried each round
    RUN_DIR/<strategy>/seed<k>/config.json     the full configuration of the run, with the strategy's options
    RUN_DIR/<strategy>/seed<k>/scores/round_RRR.npz   per-candidate scores of each query

Every file is read back with torch.load(weights_only=True) or as JSON/NumPy without pickles: a run
directory received from someone else cannot run code when it is resumed or reported.
The checkpoint is the truth; metrics, queries and results.csv mirror it and are rewritten from it
whenever a run is resumed (a crash between the checkpoint and its mirrors leaves nothing stale).
"""
from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from mqnet_fast.experiment.config import IDENTITY, IDENTITY_BEFORE, ConfigError
from mqnet_fast.io import atomic_save_npz, atomic_torch_save, atomic_write_json, atomic_write_text, read_json


class RunStore:
    """`writes` False: every write is skipped (the ranks of a torchrun run other than rank 0, which
    read what rank 0 writes)."""

    def __init__(self, run_dir: str | Path, writes: bool = True):
        self.run_dir = Path(run_dir)
        self.writes = writes
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"run_dir {str(self.run_dir)!r} exists and is not a directory")

    def check_experiment(self, identity: dict) -> None:
        """Refuse a run directory that holds another experiment (reads only: nothing is written before
        every check of a start has passed, so a refused start leaves the directory as it was)."""
        saved = self.run_dir / "experiment.json"
        if saved.exists():
            previous = read_json(saved)
            # data_digest is checked where both sides have it (run directories from before it was kept lack it)
            keys = [k for k in identity if k in IDENTITY or (k in previous and k == "data_digest")]
            previous = {**IDENTITY_BEFORE, **previous}
            differs = [k for k in keys if previous.get(k) != identity[k]]
            if differs:
                detail = ", ".join(f"{k}: {previous.get(k)!r} there, {identity[k]!r} now" for k in differs)
                raise ConfigError(f"run directory {str(self.run_dir)!r} holds a different experiment ({detail}); "
                                  "use another --run-dir or the same options to resume it")

    def record_experiment(self, identity: dict) -> None:
        """Write experiment.json (after check_experiment and every other check)."""
        if self.writes and not (self.run_dir / "experiment.json").exists():
            atomic_write_json(self.run_dir / "experiment.json", identity)

    def round_zero_path(self, seed: int, recipe: str) -> Path:
        return self.run_dir / "round0" / f"seed{seed}" / f"{recipe}.pt"

    def load_round_zero(self, seed: int, recipe: str) -> dict | None:
        """The saved round-0 model of `seed` ({"model": state dict, "train_loss": float}) or None."""
        return load_tensors(self.round_zero_path(seed, recipe))

    def save_round_zero(self, seed: int, recipe: str, model_state: dict, train_loss: float) -> None:
        if not self.writes:
            return
        atomic_torch_save(self.round_zero_path(seed, recipe), {"model": model_state, "train_loss": train_loss})

    def run(self, strategy: str, seed: int) -> "SingleRun":
        return SingleRun(self, self.run_dir / strategy / f"seed{seed}")

    def write_results(self) -> None:
        if not self.writes:
            return
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
        if not self.store.writes:
            return
        atomic_write_json(self.path / "config.json", config)

    def load_checkpoint(self) -> dict | None:
        return load_tensors(self.checkpoint_path)

    def save_round(self, state: dict) -> None:
        """Checkpoint, then the outputs that mirror it (metrics, queries, results.csv)."""
        if not self.store.writes:
            return
        atomic_torch_save(self.checkpoint_path, state)
        self.write_outputs(state)

    def write_outputs(self, state: dict) -> None:
        """metrics, queries and results.csv from the checkpoint's state (idempotent)."""
        if not self.store.writes:
            return
        atomic_write_json(self.path / "metrics.json", state["records"])
        atomic_write_text(self.path / "metrics.csv", records_to_csv(state["records"]))
        atomic_write_json(self.path / "queries.json", state["queries"])
        self.store.write_results()

    def save_scores(self, r: int, **arrays: np.ndarray) -> None:
        if not self.store.writes:
            return
        atomic_save_npz(self.path / "scores" / f"round_{r:03d}.npz", **arrays)


def load_tensors(path: Path) -> dict | None:
    """torch.load with weights_only=True (tensors, dicts, lists, numbers, strings); None if `path` is
    missing. A file holding any other pickled object is refused instead of unpickled."""
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{str(path)!r} holds pickled objects other than tensors, dicts, lists and numbers, which "
                          "a run never writes; it is not loaded (unpickling it could run code). Delete it to rerun "
                          f"that part from the start. ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as err:  # not written by an atomic save: truncated or edited
        raise ConfigError(f"{str(path)!r} cannot be read as a saved run state ({str(err).splitlines()[0]}); "
                          "delete it to rerun that part from the start") from None


def records_to_csv(records: list[dict]) -> str:
    columns = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
