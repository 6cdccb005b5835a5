"""The run store: the only code that writes to a run directory. Every file is written atomically.

    RUN_DIR/experiment.json                 the experiment's identity (dataset, split, noise, budget, ...)
    RUN_DIR/results.csv                     every round of every (strategy, seed) run
    RUN_DIR/round0/seed<k>/<recipe>.pt      the round-0 target model of seed k (shared by its strategies)
    RUN_DIR/<strategy>/seed<k>/checkpoint.pt   state to continue: labeled set, records, strategy state
    RUN_DIR/<strategy>/seed<k>/metrics.json    one record per round (also metrics.csv)
    RUN_DIR/<strategy>/seed<k>/queries.json    the global train indices queried each round
    RUN_DIR/<strategy>/seed<k>/config.json     the full configuration of the run, with the strategy's
                                               options and the sha256 of every model it used
    RUN_DIR/<strategy>/seed<k>/scores/round_RRR.npz   per-candidate scores of each query
    RUN_DIR/.locks/                         lock files (lock.py): the experiment's, one per run and per
                                            round-0 model

What a run directory guarantees (tests/test_run_guarantees.py checks each clause):
- One writer per (strategy, seed) run: a second process that would run it exits naming the holder
  (or waits, with `wait`); a lock dies with its process, SIGKILL included.
- Verified files: everything the engine reads back is sealed (mqnet_fast.io: experiment.json with a
  sha256, the checkpoints and round-0 models with the experiment's identity, the run's strategy,
  options and seed and the sha256 of their content); a file from another experiment or run, edited
  or damaged, is refused naming the file and what differs. `report` reads only sealed checkpoints.
  metrics.json, metrics.csv, queries.json, config.json and results.csv are outputs the engine
  rewrites from the checkpoints and never reads back.
- Resumable: the checkpoint is the truth; the outputs mirror it and are rewritten from it whenever a
  run is resumed (a crash between the checkpoint and its mirrors leaves nothing stale), and a file
  already holding what would be written is left alone (a finished run resumes in a read-only folder).
- No code from data: every file is read with torch.load(weights_only=True) or as JSON/NumPy
  without pickles.
- A refused start writes nothing: experiment.json is written when the runs start; a directory whose
  experiment.json names another experiment but that holds no results (a start that failed) is
  taken over by the next experiment.
"""
from __future__ import annotations

import csv
import io
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mqnet_fast.experiment.config import ConfigError
from mqnet_fast.experiment.lock import FileLock, Locked
from mqnet_fast.io import (RunFileError, atomic_save_npz, atomic_write_json, atomic_write_text, check_parents,
                           identity_differences, load_sealed, read_seal, save_sealed, seal_json, seal_payload,
                           unseal_json)


class RunLocked(ConfigError):
    """A run (or the run directory) that another process is writing."""


class RunStore:
    """`writes` False: every write and lock is skipped (the ranks of a torchrun run other than rank 0,
    which read what rank 0 writes, and the worker processes of --jobs, whose parent holds the locks)."""

    def __init__(self, run_dir: str | Path, writes: bool = True, locks: bool = True):
        if str(run_dir) == "":
            raise ConfigError("run_dir is empty; give the folder for results and checkpoints")
        self.run_dir = Path(run_dir)
        self.writes = writes
        self.locks = writes and locks
        self._held: dict[Path, FileLock] = {}
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"run_dir {str(self.run_dir)!r} exists and is not a directory")
        check_parents(self.run_dir, "run_dir", ConfigError)

    # -- the experiment -----------------------------------------------------------------------------

    def saved_experiment(self) -> dict | None:
        """experiment.json's identity, its seal checked; None if missing."""
        path = self.run_dir / "experiment.json"
        if not path.exists():
            return None
        try:
            return unseal_json(path, "experiment file")
        except RunFileError as err:
            raise ConfigError(f"run directory {str(self.run_dir)!r}: {err}") from None

    def has_results(self) -> bool:
        """Whether any run or round-0 model was saved here."""
        return (any(self.run_dir.glob("*/seed*/checkpoint.pt"))
                or any(self.run_dir.glob("round0/seed*/*.pt")))

    def check_experiment(self, identity: dict) -> None:
        """Refuse a run directory that holds results of another experiment (reads only: nothing is
        written before every check of a start has passed, so a refused start leaves the directory as
        it was). The keys compared are those of `identity` (data_digest only once the data are known)."""
        previous = self.saved_experiment()
        if previous is None:
            return
        differs = [k for k in identity if previous.get(k) != identity[k]]
        if differs and self.has_results():
            detail = ", ".join(f"{k}: {previous.get(k)!r} there, {identity[k]!r} now" for k in differs)
            only_round_zero = not any(self.run_dir.glob("*/seed*/checkpoint.pt"))
            hint = (f"; it holds round-0 models only (no run completed a round): delete "
                    f"{str(self.run_dir / 'round0')!r} to start this experiment there" if only_round_zero else "")
            raise ConfigError(f"run directory {str(self.run_dir)!r} holds a different experiment ({detail}); "
                              f"use another --run-dir or the same options to resume it{hint}")

    @contextmanager
    def session(self, identity: dict, runs: list[tuple[str, int]], *, wait: bool = False, on_wait=None):
        """Inside: experiment.json records `identity`, this process takes part in the directory's
        experiment (a shared lock, so no other experiment can take the directory over) and holds the
        lock of every (strategy, seed) run in `runs` (taken in sorted order; a run this store already
        holds is kept). A taken run raises RunLocked naming its holder, or with `wait` is waited for."""
        with ExitStack() as stack:
            if self.writes:
                self._take_part(identity, stack)
            for strategy, seed in sorted(runs):
                path = self.run_dir / ".locks" / f"run-{strategy}-seed{seed}"
                if self.locks and path not in self._held:
                    stack.enter_context(self._lock(path, f"run {strategy} seed {seed}", wait=wait, on_wait=on_wait))
            yield

    @contextmanager
    def _mutex(self):
        """The directory's mutex, held for a few reads and writes only (every process waits for it)."""
        mutex = FileLock(self.run_dir / ".locks" / "mutex")
        mutex.acquire(wait=True)
        try:
            yield
        finally:
            mutex.release()

    def _take_part(self, identity: dict, stack: ExitStack) -> None:
        if not self.locks:
            self._record_experiment(identity)
            return
        with self._mutex():
            present = self.run_dir / ".locks" / "experiment"
            if present in self._held:
                self._record_experiment(identity)
                return
            part = FileLock(present)
            previous = self.saved_experiment()
            if previous is not None and previous != identity:
                self.check_experiment(identity)  # results of another experiment: refused
                try:  # no results: taken over, unless another process is running that experiment now
                    part.acquire(wait=False)
                except Locked:
                    raise RunLocked(f"run directory {str(self.run_dir)!r} is in use by a process running another "
                                    f"experiment there{self._holders()}; use another --run-dir") from None
                try:
                    self._record_experiment(identity)
                finally:
                    part.release()
            part.acquire(shared=True, wait=True)  # exclusive holders hold the mutex too: never waits
            self._held[present] = part
            stack.callback(self._release, present)
            self._record_experiment(identity)

    def _holders(self) -> str:
        """' (run X: process ..., ...)' for every run lock held now, '' if none is."""
        held = []
        for path in sorted((self.run_dir / ".locks").glob("run-*")):
            lock = FileLock(path)
            try:
                lock.acquire(wait=False)
                lock.release()
            except Locked as holder:
                held.append(f"{path.name[len('run-'):]}: {holder}")
            except RunFileError:
                continue
        return f" ({'; '.join(held)})" if held else ""

    def _record_experiment(self, identity: dict) -> None:
        if self.saved_experiment() != identity:
            atomic_write_json(self.run_dir / "experiment.json", seal_json(identity))

    @contextmanager
    def _lock(self, path: Path, what: str, *, wait: bool, on_wait=None):
        lock = FileLock(path)
        try:
            lock.acquire(wait=wait, on_wait=(lambda holder: on_wait(what, holder)) if on_wait else None)
        except Locked as held:
            raise RunLocked(f"{what} in {str(self.run_dir)!r} is being written by {held}; wait for it to end "
                            "(or pass --wait to wait here), or use another --run-dir") from None
        self._held[path] = lock
        try:
            yield
        finally:
            self._release(path)

    def _release(self, path: Path) -> None:
        lock = self._held.pop(path, None)
        if lock is not None:
            lock.release()

    @contextmanager
    def round_zero_lock(self, seed: int, on_wait=None):
        """Held while the round-0 model of `seed` is loaded or trained and saved: a second process
        needing it waits, then loads it, instead of training it again."""
        path = self.run_dir / ".locks" / f"round0-seed{seed}"
        if not self.locks or path in self._held:
            yield
            return
        with self._lock(path, f"round 0 of seed {seed}", wait=True, on_wait=on_wait):
            yield

    # -- files ---------------------------------------------------------------------------------------

    def round_zero_path(self, seed: int, recipe: str) -> Path:
        return self.run_dir / "round0" / f"seed{seed}" / f"{recipe}.pt"

    def _round_zero_identity(self, identity: dict, seed: int, recipe: str) -> dict:
        return {"experiment": identity, "seed": seed, "recipe": recipe, "round": 0}

    def load_round_zero(self, identity: dict, seed: int, recipe: str) -> tuple[dict, str] | None:
        """(the saved round-0 model of `seed` {"model": state dict, "train_loss": float}, its sha256),
        or None; refused unless sealed by this experiment for this seed and recipe."""
        path = self.round_zero_path(seed, recipe)
        loaded = load_sealed(path, self._round_zero_identity(identity, seed, recipe), "the round-0 model")
        if loaded is None:
            return None
        saved, digest = loaded
        if not (isinstance(saved, dict) and isinstance(saved.get("model"), dict)
                and isinstance(saved.get("train_loss"), (int, float))):
            raise RunFileError(f"the round-0 model {str(path)!r} lacks its model or train_loss; delete it to train "
                               "round 0 again")
        return saved, digest

    def save_round_zero(self, identity: dict, seed: int, recipe: str, model_state: dict,
                        train_loss: float) -> str | None:
        """Seal and save the round-0 model; its sha256 (None where this store does not write)."""
        if not self.writes:
            return None
        return save_sealed(self.round_zero_path(seed, recipe), {"model": model_state, "train_loss": train_loss},
                           self._round_zero_identity(identity, seed, recipe))

    def run(self, strategy: str, seed: int) -> "SingleRun":
        return SingleRun(self, strategy, seed)

    def verified_runs(self, identity: dict | None = None) -> tuple[list[dict], list[tuple[Path, str]]]:
        """([{"strategy", "seed", "options", "records", "path"}, ...] of every checkpoint whose seal
        verifies against `identity` (None: experiment.json's), [(path, why), ...] of those skipped)."""
        runs, skipped = [], []
        if identity is None:
            try:
                identity = self.saved_experiment()
            except ConfigError as err:
                return [], [(self.run_dir / "experiment.json", str(err))]
        for path in sorted(self.run_dir.glob("*/seed*/checkpoint.pt")):
            if identity is None:
                skipped.append((path, "the run directory has no experiment.json"))
                continue
            strategy, seed = path.parent.parent.name, path.parent.name[len("seed"):]
            try:
                state = SingleRun(self, strategy, int(seed)).load(identity)
            except (RunFileError, ValueError) as err:
                skipped.append((path, str(err)))
                continue
            runs.append({"strategy": strategy, "seed": int(seed), "options": state["identity"]["options"],
                         "records": state["records"], "path": path.parent})
        return runs, skipped

    def write_results(self, identity: dict) -> None:
        """results.csv: the records of every run whose checkpoint verifies."""
        if not self.writes:
            return
        with self._mutex():  # two writers of one experiment (--jobs workers too): the later snapshot lands last
            runs, _ = self.verified_runs(identity)
            records = [record for run in runs for record in run["records"]]
            atomic_write_text(self.run_dir / "results.csv", records_to_csv(records))


STATE_KEYS = {"labeled": list, "records": list, "queries": list, "strategy": dict, "models": dict}


class SingleRun:
    """The files of one (strategy, seed) run."""

    def __init__(self, store: RunStore, strategy: str, seed: int):
        self.store, self.strategy, self.seed = store, strategy, seed
        self.path = store.run_dir / strategy / f"seed{seed}"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self._config: dict | None = None

    def identity(self, experiment: dict, options: dict) -> dict:
        return {"experiment": experiment, "strategy": self.strategy, "options": options, "seed": self.seed}

    def check_options(self, experiment: dict, options: dict) -> None:
        """Refuse to resume a run made with other strategy options (or a checkpoint of another run)."""
        seal = read_seal(self.checkpoint_path, "checkpoint")
        if seal is None:
            return
        there = seal["identity"]
        expected = self.identity(experiment, options)
        differs = identity_differences({k: there.get(k) for k in ("experiment", "strategy", "seed")},
                                       {k: expected[k] for k in ("experiment", "strategy", "seed")})
        if not differs and there.get("options") != options:
            raise ConfigError(f"run {str(self.path)!r} was made with strategy options {there.get('options')}, not "
                              f"{options}; use another --run-dir or the same options")
        if differs:
            raise RunFileError(f"checkpoint {str(self.checkpoint_path)!r} was written by another experiment or run "
                               f"({differs}); it is not used: move it back where it came from, or delete it to "
                               "rerun this run from the start")

    def write_config(self, config: dict, models: dict) -> None:
        """Write the run's configuration with the models it used so far (config.json; updated as it saves)."""
        self._config = config
        if self.store.writes:
            atomic_write_json(self.path / "config.json", {**config, "models": models})

    def load(self, experiment: dict, options: dict | None = None) -> dict | None:
        """The checkpoint's state ({"labeled", "records", "queries", "strategy", "models", "identity"}),
        verified: sealed for this experiment, strategy and seed (and `options`, where given), and
        well-formed; None if there is none."""
        path = self.checkpoint_path
        seal = read_seal(path, "checkpoint")
        if seal is None:
            return None
        there = seal["identity"]
        expected = self.identity(experiment, there.get("options") if options is None else options)
        differs = identity_differences({k: there.get(k) for k in expected}, expected)
        if differs:
            raise RunFileError(f"checkpoint {str(path)!r} was written by another experiment or run ({differs}); it "
                               "is not used: move it back where it came from, or delete it to rerun this run")
        state = seal_payload(seal, path, "checkpoint")
        problem = _state_problem(state, self.strategy, self.seed, there)
        if problem:
            raise RunFileError(f"checkpoint {str(path)!r} is not a run state ({problem}); delete it to rerun this run "
                               "from the start")
        return {**state, "identity": there}

    def save_round(self, experiment: dict, options: dict, state: dict) -> None:
        """Checkpoint, then the outputs that mirror it (metrics, queries, config, results.csv)."""
        if not self.store.writes:
            return
        identity = {**self.identity(experiment, options), "round": len(state["records"]) - 1}
        save_sealed(self.checkpoint_path, {k: state[k] for k in STATE_KEYS}, identity)
        self.write_outputs(experiment, state)

    def write_outputs(self, experiment: dict, state: dict) -> None:
        """metrics, queries, config and results.csv from the checkpoint's state (idempotent)."""
        if not self.store.writes:
            return
        atomic_write_json(self.path / "metrics.json", state["records"])
        atomic_write_text(self.path / "metrics.csv", records_to_csv(state["records"]))
        atomic_write_json(self.path / "queries.json", state["queries"])
        if self._config is not None:
            atomic_write_json(self.path / "config.json", {**self._config, "models": state["models"]})
        self.store.write_results(experiment)

    def save_scores(self, r: int, **arrays) -> None:
        if not self.store.writes:
            return
        atomic_save_npz(self.path / "scores" / f"round_{r:03d}.npz", **arrays)


def _state_problem(state, strategy: str, seed: int, identity: dict) -> str:
    """What makes `state` not a run state of (strategy, seed) ('' when nothing does)."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    records = state["records"]
    if not records or not all(isinstance(r, dict) for r in records):
        return "no round records"
    for r, record in enumerate(records):
        if record.get("round") != r or record.get("strategy") != strategy or record.get("seed") != seed:
            return f"record {r} is of round {record.get('round')!r}, strategy {record.get('strategy')!r}, seed " \
                   f"{record.get('seed')!r}"
        if not isinstance(record.get("test_accuracy"), (int, float)):
            return f"record {r} has no test_accuracy"
    if identity.get("round") != len(records) - 1:
        return f"its seal says round {identity.get('round')!r}, its records end at round {len(records) - 1}"
    if len(state["queries"]) not in (len(records) - 1, len(records)):
        return f"{len(state['queries'])} queries for {len(records)} rounds"
    if not all(isinstance(i, int) for i in state["labeled"]):
        return "'labeled' holds other than integers"
    return ""


def records_to_csv(records: list[dict]) -> str:
    columns = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


