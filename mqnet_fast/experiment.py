"""The open-set active-learning loop, checkpointed per round.

Per round r = 0..R: train a freshly initialized target model on the labeled IN examples, evaluate it
on the IN test classes, and (for r < R) score the unlabeled pool, query `budget` examples with the
strategy, label them (IN or OOD) and let the strategy learn from the result (MQ-Net trains Phi).
So there are R queries and R + 1 evaluations; the last one measures the final labeled set.

Run directory layout (every file written atomically; pandas reads the JSON/CSV directly):

    RUN_DIR/experiment.json                 the experiment (dataset, split, noise, budget, ...)
    RUN_DIR/results.csv                     every round of every (strategy, seed) run
    RUN_DIR/<strategy>/seed<k>/checkpoint.pt   state to continue: labeled set, records, Phi
    RUN_DIR/<strategy>/seed<k>/metrics.json    one record per round (also metrics.csv)
    RUN_DIR/<strategy>/seed<k>/queries.json    the global train indices queried each round
    RUN_DIR/<strategy>/seed<k>/config.json     the full configuration of the run
    RUN_DIR/<strategy>/seed<k>/scores/round_RRR.npz   per-candidate scores of each query

Each round depends only on the checkpoint before it and on seeds derived from (seed, round), so
rerunning the same command after a crash or Ctrl-C resumes after the last completed round and gives
the same results as an uninterrupted run.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.data import ImageArrays, load_dataset, make_open_set
from mqnet_fast.io import atomic_save_npz, atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from mqnet_fast.mqnet import MetaTrainConfig
from mqnet_fast.progress import progress_bar
from mqnet_fast.scores import INFORMATIVENESS
from mqnet_fast.strategies import STRATEGIES, PoolState, Strategy, make_strategy
from mqnet_fast.train import DeviceImages, TrainConfig, infer, make_model, train_model

# Per-dataset defaults: (budget, rounds, iterations). CIFAR follows the paper (b = 500, 10 rounds,
# 20,000 iterations); digits is sized for a CPU demo in minutes.
DEFAULTS = {"digits": (20, 5, 100), "cifar10": (500, 10, 20000), "cifar100": (500, 10, 20000)}
FALLBACK_DEFAULTS = (500, 10, 20000)
NOISE_LEVELS = (0.1, 0.2, 0.4, 0.6)
IDENTITY = ("dataset", "split", "noise", "budget", "rounds", "iterations", "batch_size", "lr",
            "informativeness", "meta_epochs", "meta_min_steps_per_epoch")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the option and the problem."""


@dataclass
class ExperimentConfig:
    dataset: str = "digits"
    split: str = "4:6"            # IN:OOD class ratio
    noise: float = 0.6            # tau: the share of OOD examples in the pool
    strategies: list[str] = field(default_factory=lambda: ["mqnet"])
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: int | None = None     # None: the dataset's default
    rounds: int | None = None
    iterations: int | None = None
    batch_size: int = 64
    lr: float = 0.1
    informativeness: str = "conf"
    meta_epochs: int = 100
    meta_min_steps_per_epoch: int = 100
    data_root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    progress: bool = True

    def resolved(self) -> "ExperimentConfig":
        """A copy with the dataset defaults filled in and every option checked."""
        budget, rounds, iterations = DEFAULTS.get(self.dataset, FALLBACK_DEFAULTS)
        out = dataclasses.replace(self, budget=self.budget if self.budget is not None else budget,
                                  rounds=self.rounds if self.rounds is not None else rounds,
                                  iterations=self.iterations if self.iterations is not None else iterations,
                                  strategies=list(self.strategies), seeds=[int(s) for s in self.seeds])
        out.validate()
        return out

    def validate(self) -> None:
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
        if not self.strategies:
            raise ConfigError("strategies: give at least one")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies: {self.strategies} lists one twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not 0.0 <= self.noise < 1.0:
            raise ConfigError(f"noise ratio must be in [0, 1) (the paper uses {NOISE_LEVELS}), got {self.noise}")
        parse_split(self.split)
        for name in ("budget", "rounds", "iterations", "batch_size", "meta_epochs", "meta_min_steps_per_epoch"):
            value = getattr(self, name)
            low = 0 if name == "rounds" else 1
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.informativeness not in INFORMATIVENESS:
            raise ConfigError(f"informativeness must be one of {INFORMATIVENESS}, got {self.informativeness!r}")
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except RuntimeError as err:
                raise ConfigError(f"device {self.device!r} is not a device name ({err})") from err
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r}: no CUDA GPU is visible")

    def identity(self) -> dict:
        return {name: getattr(self, name) for name in IDENTITY}

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def parse_split(split: str) -> tuple[int, int]:
    try:
        a, b = (int(part) for part in str(split).split(":"))
    except ValueError:
        raise ConfigError(f"split must look like IN:OOD, e.g. 4:6, got {split!r}") from None
    if a <= 0 or b <= 0:
        raise ConfigError(f"split {split!r}: both parts must be positive")
    return a, b


def num_in_classes(split: str, num_classes: int) -> int:
    a, b = parse_split(split)
    n = int(round(num_classes * a / (a + b)))
    if not 0 < n < num_classes:
        raise ConfigError(f"split {split!r} leaves {n} IN classes of {num_classes}; both sides need one")
    return n


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from (seed, round, purpose, ...)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --------------------------------------------------------------------------------------------------


class Experiment:
    """Data, split and device for one experiment; `run()` runs every (strategy, seed) pair, resuming
    whatever the run directory already holds."""

    def __init__(self, config: ExperimentConfig, run_dir: str | Path, data: ImageArrays | None = None):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self._check_run_dir()
        self.device = self.config.torch_device()
        self.data = data if data is not None else load_dataset(
            self.config.dataset, self.config.data_root, download=self.config.download,
            cache_dir=self.config.cache_dir)
        self.num_in = num_in_classes(self.config.split, self.data.num_classes)
        needed = self.config.budget * (self.config.rounds + 1)
        # The pool size depends on the seed only through rounding; check each seed's split up front.
        self.splits = {}
        for seed in self.config.seeds:
            try:
                split = make_open_set(self.data.train_labels, self.data.num_classes, self.num_in,
                                      self.config.noise, self.config.budget, seed)
            except ValueError as err:
                raise ConfigError(str(err)) from err
            if needed > len(split.pool):
                raise ConfigError(f"budget {self.config.budget} x (rounds {self.config.rounds} + the initial set) = "
                                  f"{needed} examples, more than the pool holds ({len(split.pool)})")
            self.splits[seed] = split
        mean, std = DeviceImages.channel_stats(self.data.train_images)
        self.train_images = DeviceImages(self.data.train_images, mean, std, self.device, self.data.flip)
        self.test_images = DeviceImages(self.data.test_images, mean, std, self.device, self.data.flip)
        self._round_zero = {}

    def _check_run_dir(self) -> None:
        saved = self.run_dir / "experiment.json"
        identity = self.config.identity()
        if saved.exists():
            previous = read_json(saved)
            differs = [k for k in IDENTITY if previous.get(k) != identity[k]]
            if differs:
                detail = ", ".join(f"{k}: {previous.get(k)!r} there, {identity[k]!r} now" for k in differs)
                raise ConfigError(f"run directory {str(self.run_dir)!r} holds a different experiment ({detail}); "
                                  "use another --run-dir or the same options to resume it")
        else:
            atomic_write_json(saved, identity)

    def run(self, stop_after_rounds: int | None = None) -> list[dict]:
        """Run (or resume) every (strategy, seed) pair; returns all round records. `stop_after_rounds`
        ends each run after that many completed rounds in this call (for tests of resuming)."""
        records = []
        for seed in self.config.seeds:
            for name in self.config.strategies:
                records += self.run_one(name, seed, stop_after_rounds)
        return records

    # ----------------------------------------------------------------------------------------------

    def run_one(self, strategy_name: str, seed: int, stop_after_rounds: int | None = None) -> list[dict]:
        cfg, split = self.config, self.splits[seed]
        run_path = self.run_dir / strategy_name / f"seed{seed}"
        checkpoint_path = run_path / "checkpoint.pt"
        strategy = make_strategy(strategy_name, informativeness_kind=cfg.informativeness,
                                 meta_config=MetaTrainConfig(epochs=cfg.meta_epochs,
                                                             min_steps_per_epoch=cfg.meta_min_steps_per_epoch),
                                 seed=derive_seed(seed, "meta-init"))
        atomic_write_json(run_path / "config.json", {**dataclasses.asdict(cfg), "strategy": strategy_name,
                                                     "seed": seed, "num_in_classes": self.num_in,
                                                     "in_classes": split.in_classes, "split_notes": split.notes})
        if checkpoint_path.exists():
            state = torch.load(checkpoint_path, weights_only=False)
            strategy.load_state_dict(state["strategy"])
        else:
            state = {"labeled": split.initial_labeled.tolist(), "records": [], "queries": [], "strategy": {}}
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        done_here = 0
        rounds = progress_bar(range(len(state["records"]), cfg.rounds + 1), desc=f"{strategy_name} seed {seed}",
                              disable=not cfg.progress, initial=len(state["records"]), total=cfg.rounds + 1)
        for r in rounds:
            if stop_after_rounds is not None and done_here >= stop_after_rounds:
                break
            record, query = self._round(strategy, strategy_name, seed, r, np.array(state["labeled"], np.int64),
                                        run_path)
            state["records"].append(record)
            if query is not None:
                state["queries"].append(query.tolist())
                state["labeled"] = sorted(state["labeled"] + query.tolist())
            state["strategy"] = strategy.state_dict()
            atomic_torch_save(checkpoint_path, state)
            self._write_outputs(run_path, state)
            done_here += 1
        return state["records"]

    def _round(self, strategy: Strategy, strategy_name: str, seed: int, r: int, labeled: np.ndarray,
               run_path: Path):
        cfg, split, data = self.config, self.splits[seed], self.data
        timings = {}
        labels_in = self._in_label_map(seed)
        labeled_in = labeled[split.is_in[labeled]]

        tick = time.perf_counter()
        model, train_loss = self._train(seed, r, labeled_in, strategy_name)
        timings["time_train"] = time.perf_counter() - tick

        tick = time.perf_counter()
        test_rows = np.flatnonzero(np.isin(data.test_labels, split.in_classes))
        logits, _ = infer(model, self.test_images, torch.from_numpy(test_rows))
        truth = torch.from_numpy(labels_in[data.test_labels[test_rows]]).to(logits.device)
        accuracy = float((logits.argmax(1) == truth).float().mean()) if len(test_rows) else float("nan")
        timings["time_eval"] = time.perf_counter() - tick

        record = {"strategy": strategy_name, "seed": seed, "round": r, "dataset": cfg.dataset,
                  "noise": cfg.noise, "split": cfg.split, "budget": cfg.budget,
                  "test_accuracy": accuracy, "train_loss": train_loss,
                  "labeled_in": int(len(labeled_in)), "labeled_ood": int(len(labeled) - len(labeled_in))}
        query = None
        if r < cfg.rounds:
            tick = time.perf_counter()
            candidates = np.setdiff1d(split.pool, labeled)
            cand_logits, cand_feats = infer(model, self.train_images, torch.from_numpy(candidates))
            _, labeled_feats = infer(model, self.train_images, torch.from_numpy(labeled))
            in_mask = torch.from_numpy(split.is_in[labeled]).to(labeled_feats.device)
            pool_state = PoolState(r, torch.from_numpy(candidates), torch.softmax(cand_logits, 1), cand_feats,
                                   labeled_feats, labeled_feats[in_mask],
                                   torch.Generator().manual_seed(derive_seed(seed, r, "select")))
            timings["time_infer"] = time.perf_counter() - tick

            tick = time.perf_counter()
            selection = strategy.select(pool_state, cfg.budget)
            timings["time_select"] = time.perf_counter() - tick
            query = selection.indices.cpu().numpy().astype(np.int64)
            positions = check_selection(query, candidates, cfg.budget, strategy_name)
            columns = {k: v.cpu().numpy() for k, v in selection.columns.items()}
            if selection.scores is not None:
                columns["score"] = selection.scores.cpu().numpy()
            atomic_save_npz(run_path / "scores" / f"round_{r:03d}.npz", candidates=candidates, query=query,
                            is_in=split.is_in[candidates], **columns)

            # Masked cross-entropy of the current model on the now-labeled query: 0 for OOD examples.
            query_in = split.is_in[query]
            losses = torch.zeros(len(query))
            if query_in.any():
                rows = torch.from_numpy(positions[query_in])
                targets = torch.from_numpy(labels_in[data.train_labels[query[query_in]]])
                losses[torch.from_numpy(query_in)] = F.cross_entropy(
                    cand_logits[rows.to(cand_logits.device)].float().cpu(), targets, reduction="none")
            tick = time.perf_counter()
            record.update(strategy.observe(pool_state, torch.from_numpy(positions), losses,
                                           derive_seed(seed, r, "meta-train")))
            timings["time_meta"] = time.perf_counter() - tick
            record.update({"query_in": int(query_in.sum()), "query_ood": int(len(query) - query_in.sum()),
                           "query_in_percent": 100.0 * float(query_in.mean())})
            record.update(selection.extra)
        record.update({k: round(v, 4) for k, v in timings.items()})
        return record, query

    def _in_label_map(self, seed: int) -> np.ndarray:
        """Original class -> IN label 0..K-1 in the order of the seed's IN classes; -1 for OOD."""
        mapping = np.full(self.data.num_classes, -1, np.int64)
        mapping[self.splits[seed].in_classes] = np.arange(self.num_in)
        return mapping

    def _train(self, seed: int, r: int, labeled_in: np.ndarray, strategy_name: str):
        """A fresh target model trained on the labeled IN examples. Round 0 starts from the same
        initial labeled set for every strategy, so its model is trained once per seed and shared."""
        cfg = self.config
        if r == 0 and seed in self._round_zero:
            return self._round_zero[seed]
        model = make_model(self.num_in, self.data.image_shape[-1], self.device, derive_seed(seed, r, "model-init"))
        if len(labeled_in) == 0:
            loss = float("nan")  # nothing IN to learn from yet: the model stays at its initialization
        else:
            index = torch.from_numpy(labeled_in)
            labels = torch.from_numpy(self._in_label_map(seed)[self.data.train_labels[labeled_in]])
            loss = train_model(model, self.train_images, index, labels,
                               TrainConfig(cfg.iterations, cfg.batch_size, cfg.lr), derive_seed(seed, r, "train"),
                               desc=f"round {r} train", show_progress=cfg.progress)
        if r == 0:
            self._round_zero[seed] = (model, loss)
        return model, loss

    def _write_outputs(self, run_path: Path, state: dict) -> None:
        atomic_write_json(run_path / "metrics.json", state["records"])
        atomic_write_text(run_path / "metrics.csv", records_to_csv(state["records"]))
        atomic_write_json(run_path / "queries.json", state["queries"])
        all_records = []
        for path in sorted(self.run_dir.glob("*/seed*/metrics.json")):
            all_records += read_json(path)
        atomic_write_text(self.run_dir / "results.csv", records_to_csv(all_records))


def check_selection(query: np.ndarray, candidates: np.ndarray, budget: int, strategy: str) -> np.ndarray:
    """The strategy contract: `budget` distinct unlabeled pool examples. Returns their rows in
    `candidates` (sorted ascending)."""
    if query.shape != (budget,):
        raise RuntimeError(f"strategy {strategy!r} returned {query.shape} indices, expected ({budget},)")
    if len(np.unique(query)) != budget:
        raise RuntimeError(f"strategy {strategy!r} returned repeated indices")
    positions = np.searchsorted(candidates, query)
    if (positions >= len(candidates)).any() or (candidates[np.minimum(positions, len(candidates) - 1)] != query).any():
        raise RuntimeError(f"strategy {strategy!r} returned indices that are labeled or not in the pool")
    return positions


def records_to_csv(records: list[dict]) -> str:
    columns = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
