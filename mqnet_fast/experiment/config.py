"""The experiment's configuration, its validation and its identity."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mqnet_fast.data import is_embeddings
from mqnet_fast.scores.csi import NEEDS_IMAGES
from mqnet_fast.strategies import STRATEGIES, make_options, option_names, strategy_class
from mqnet_fast.training.target import BATCHING

# Per-dataset defaults. CIFAR follows the paper (b = 500, 10 rounds, 20,000 iterations, lr 0.1,
# the standard ResNet-18). Digits is sized for a CPU demo in minutes and for a measurable strategy
# difference: a ResNet-18 of width 16 trained 300 iterations at lr 0.03 varies by 1.9 / 1.1 points
# (std over 5 training seeds) on fixed labeled sets of 20 / 60 IN examples, where the earlier width 64
# / 100 iterations / lr 0.1 varied by 5.8 / 2.9 and took 8.6x longer per iteration
# (benchmarks/engine/digits_training_spread.py, benchmarks/engine/digits_step_profile.py).
# Embeddings (every embeddings:<file>): the paper's CIFAR budgets (b = 500, 10 rounds, for a CIFAR-size
# pool) with a linear head (width 0) trained 1,000 iterations at lr 0.03: on CIFAR-10's 256-dim pixel
# PCA and on a short CSI encoder's 128-dim features (4 IN classes) within 1.5 points of the best of
# lr 0.01-0.3 x 300-3,000 iterations at 200 and at 2,000 labeled IN examples, 0.15 s a training on
# one CPU thread; a hidden layer of 256 units (width=256) gained 2 / 5 points on the pixels and
# 0 / 2 on the CSI features.
DEFAULTS = {"digits": dict(budget=20, rounds=5, iterations=300, lr=0.03, width=16),
            "cifar10": dict(budget=500, rounds=10, iterations=20000, lr=0.1, width=64),
            "cifar100": dict(budget=500, rounds=10, iterations=20000, lr=0.1, width=64),
            "embeddings": dict(budget=500, rounds=10, iterations=1000, lr=0.03, width=0)}
FALLBACK_DEFAULTS = DEFAULTS["cifar10"]
NOISE_LEVELS = (0.1, 0.2, 0.4, 0.6)
# What makes two runs the same experiment (stored in RUN_DIR/experiment.json). A strategy's own
# options are part of its run's identity too (stored and checked per run in config.json).
IDENTITY = ("dataset", "split", "noise", "budget", "rounds", "iterations", "batch_size", "lr", "width",
            "encoder_epochs", "micro_batches", "infer_batch", "ood_dataset", "batching", "loss_module")
LOSS_MODULE = ("auto", "all")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the option and the problem."""


@dataclass
class ExperimentConfig:
    """One experiment: data, open-set split, AL protocol, training recipe and strategies with their
    options (the fields in IDENTITY define it), and how to run it (device, progress, jobs). None
    fields take the dataset's defaults in `resolved()`."""
    dataset: str = "digits"
    split: str = "4:6"            # IN:OOD class ratio (not used with ood_dataset)
    ood_dataset: str | None = None  # the cross-dataset setup: every class of `dataset` IN, this dataset's OOD
    noise: float = 0.6            # tau: the share of OOD examples in the pool
    strategies: list[str] = field(default_factory=lambda: ["mqnet"])
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: int | None = None     # None: the dataset's default
    rounds: int | None = None
    iterations: int | None = None
    batch_size: int = 64
    lr: float | None = None
    width: int | None = None      # the target ResNet-18's first-stage channels (64 = the standard network);
    #                               on embeddings the head's hidden units (0 = a linear head)
    encoder_epochs: int | None = None  # the CSI encoder's epochs (None: the dataset's default; none on embeddings)
    micro_batches: int | None = None  # each batch as this many parts (TrainConfig.micro_batches); None: the
    #                                   number of processes (torchrun ranks), 1 in one process
    infer_batch: int = 1024           # rows per inference batch; under torchrun the shards start at its multiples
    batching: str = "fill"            # TrainConfig.batching: "fill" (batches of batch_size, a small labeled set
    #                                   repeated in them) or "distinct" (each example at most once a batch)
    loss_module: str = "all"          # "all": every strategy's target carries learning loss's module (equal models
    #                                   in one comparison); "auto": only where the strategy uses it (ll, mqnet with
    #                                   informativeness ll), as the published code trains them
    options: dict = field(default_factory=dict)  # strategy options by name, e.g. {"purity": "knn"}
    data_root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    progress: bool = True
    # (strategy, seed) runs at once, each in its own process with torch.get_num_threads() // jobs
    # threads (Experiment.run); not part of the identity, though a run's numbers depend on its thread
    # count (oneDNN splits its reductions by thread): --jobs N equals OMP_NUM_THREADS=threads // N --jobs 1
    jobs: int = 1
    purity_diagnostics: bool = False  # record every purity score's AUROC per round (not part of the identity)
    wait: bool = False  # a run another process is writing: wait for it (True) or refuse at once (False)

    def resolved(self, world_size: int = 1) -> "ExperimentConfig":
        """A copy with the dataset defaults filled in and every option checked, for a run on
        `world_size` processes."""
        defaults = {**dataset_defaults(self.dataset), "micro_batches": world_size}
        filled = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in defaults.items()}
        if self.encoder_epochs is None and not is_embeddings(self.dataset):
            from mqnet_fast.training.contrastive import EncoderConfig

            filled["encoder_epochs"] = EncoderConfig.for_dataset(self.dataset).epochs
        out = dataclasses.replace(self, **filled,
                                  strategies=list(self.strategies), seeds=[int(s) for s in self.seeds],
                                  options=dict(self.options))
        out.validate(world_size)
        return out

    def validate(self, world_size: int = 1) -> None:
        """Raise ConfigError naming the first field that is out of range or inconsistent."""
        if not isinstance(self.wait, bool):
            raise ConfigError(f"wait must be True or False, got {self.wait!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"jobs must be an integer >= 1, got {self.jobs!r}")
        if self.jobs > 1 and world_size > 1:
            raise ConfigError(f"jobs ({self.jobs}) runs processes on one machine; under torchrun the {world_size} "
                              "processes already share every run (use jobs 1)")
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
        if not self.strategies:
            raise ConfigError("strategies: give at least one")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies: {self.strategies} lists one twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        bad_seeds = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32]
        if bad_seeds:
            raise ConfigError(f"seeds must be integers in [0, 2**32), got {bad_seeds}")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise ConfigError(f"cache_dir {self.cache_dir!r} exists and is not a directory")
        if not 0.0 <= self.noise < 1.0:
            raise ConfigError(f"noise ratio must be in [0, 1) (the paper uses {NOISE_LEVELS}), got {self.noise}")
        parse_split(self.split)
        embeddings = is_embeddings(self.dataset)
        if self.ood_dataset is not None:
            if not isinstance(self.ood_dataset, str) or not self.ood_dataset:
                raise ConfigError(f"ood_dataset must be a dataset name, got {self.ood_dataset!r}")
            if embeddings or is_embeddings(self.ood_dataset):
                raise ConfigError(f"ood_dataset: the cross-dataset setup converts images; "
                                  f"{self.dataset if embeddings else self.ood_dataset!r} is fixed embeddings")
            if self.ood_dataset == self.dataset:
                raise ConfigError(f"ood_dataset {self.ood_dataset!r} is the IN dataset itself; for OOD classes of "
                                  "the same dataset use split (the split-dataset setup)")
            if self.split != "4:6":
                raise ConfigError(f"split {self.split!r}: with ood_dataset every class of {self.dataset!r} is IN "
                                  "and every class of the OOD dataset OOD, so there is no split to give")
        for name in ("budget", "rounds", "iterations", "batch_size", "width"):
            value = getattr(self, name)
            low = 0 if name == "rounds" or (name == "width" and embeddings) else 1
            if not isinstance(value, int) or value < low:
                what = " (on embeddings the head's hidden units, 0 = linear)" if name == "width" and embeddings else ""
                raise ConfigError(f"{name} must be an integer >= {low}{what}, got {value!r}")
        for name in ("micro_batches", "infer_batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.micro_batches is not None and self.batch_size % self.micro_batches:
            raise ConfigError(f"micro_batches ({self.micro_batches}) must divide batch_size ({self.batch_size})")
        if world_size > 1 and self.micro_batches is not None and self.micro_batches != world_size:
            raise ConfigError(f"micro_batches is {self.micro_batches} but the run has {world_size} processes: under "
                              "torchrun each rank trains one micro-batch, so give the number of processes (or leave "
                              "it out)")
        if self.batching not in BATCHING:
            raise ConfigError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.loss_module not in LOSS_MODULE:
            raise ConfigError(f"loss_module must be one of {', '.join(LOSS_MODULE)}, got {self.loss_module!r}")
        if self.encoder_epochs is not None and embeddings:
            raise ConfigError(f"encoder_epochs: dataset {self.dataset!r} is fixed embeddings, which have no CSI "
                              "encoder to train (purity 'csi' is measured in the given embedding)")
        if self.encoder_epochs is not None and (not isinstance(self.encoder_epochs, int) or self.encoder_epochs < 1):
            raise ConfigError(f"encoder_epochs must be an integer >= 1, got {self.encoder_epochs!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        owners = {name: [s for s in self.strategies if name in option_names(s)] for name in self.options}
        for name, strategies in owners.items():
            if not strategies:
                raise ConfigError(f"option {name!r} belongs to none of the strategies {', '.join(self.strategies)}")
        for strategy in self.strategies:
            options = self.strategy_options(strategy)
            if embeddings and strategy_class(strategy).needs_images:
                raise ConfigError(f"strategy {strategy!r} trains contrastive encoders on the pool's images; dataset "
                                  f"{self.dataset!r} is fixed embeddings")
            if embeddings and getattr(options, "purity", None) in NEEDS_IMAGES:
                raise ConfigError(f"strategy {strategy!r}: purity {options.purity!r} needs the pool's images "
                                  f"(rotations and CSI's shift head); dataset {self.dataset!r} is fixed embeddings: "
                                  "use purity csi (max cosine similarity in the given embedding), csi-ood, knn "
                                  "or react")
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except RuntimeError as err:
                raise ConfigError(f"device {self.device!r} is not a device name ({err})") from err
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r}: no CUDA GPU is visible")
            if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigError(f"device {self.device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")

    def strategy_options(self, strategy: str):
        """The Options of `strategy`: the config's values for the options it has, defaults for the rest."""
        mine = {k: v for k, v in self.options.items() if k in option_names(strategy)}
        try:
            return make_options(strategy, **mine)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"strategy {strategy!r}: {err}") from err

    def identity(self) -> dict:
        """The fields that define the experiment (IDENTITY): what a run directory is bound to."""
        return {name: getattr(self, name) for name in IDENTITY}

    def torch_device(self) -> torch.device:
        """The device to run on ("auto": the GPU if one is visible, else the CPU)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def dataset_defaults(dataset: str) -> dict:
    """The DEFAULTS entry of a dataset name: "embeddings" for every embeddings:<file>, the CIFAR
    setting for image datasets without one of their own (image folders)."""
    return DEFAULTS["embeddings"] if is_embeddings(dataset) else DEFAULTS.get(dataset, FALLBACK_DEFAULTS)


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
