"""The open-set active-learning loop, checkpointed per round.

Per round r = 0..R: train a freshly initialized target model on the labeled IN examples, evaluate it
on the IN test classes, and (for r < R) infer the candidates, select `budget` of them with the
strategy, label them (IN or OOD) and let the strategy learn from the result (MQ-Net trains Phi).
So there are R queries and R + 1 evaluations; the last one measures the final labeled set.

Each round depends only on the checkpoint before it and on seeds derived from (seed, round), so
rerunning the same command after a crash or Ctrl-C resumes after the last completed round and gives
the same results as an uninterrupted run. The run directory's layout: mqnet_fast.experiment.store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from mqnet_fast import _memory
from mqnet_fast.cache import RunCache, array_digest
from mqnet_fast.world import World
from mqnet_fast.data import (DataError, FeatureArrays, ImageArrays, default_cache_dir, is_embeddings, load_dataset,
                             with_ood_dataset)
from mqnet_fast.experiment.split import make_open_set
from mqnet_fast.experiment import phases
from mqnet_fast.experiment.config import ConfigError, ExperimentConfig, derive_seed, num_in_classes
from mqnet_fast.experiment.store import RunStore
from mqnet_fast.metrics import auroc
from mqnet_fast.scores import PURITY, purity
from mqnet_fast.scores.csi import NEEDS_IMAGES
from mqnet_fast.progress import progress_bar
from mqnet_fast.strategies import Strategy, make_strategy, strategy_class
from mqnet_fast.io import RunFileError, first_line
from mqnet_fast.labeled import LabeledSet
from mqnet_fast.training import DeviceFeatures, DeviceImages, TrainConfig, make_model, model_arch
from mqnet_fast.training.factory import estimate_train_bytes


class WorkerDied(RuntimeError):
    """A --jobs worker process ended without a result (killed, or out of memory)."""


class Experiment:
    """Data, split and device for one experiment; `run()` runs every (strategy, seed) pair, resuming
    whatever the run directory already holds. On images the target model is a ResNet-18; on fixed
    embeddings (FeatureArrays, dataset ``embeddings:<file>``) a FeatureHead of hidden width
    `config.width` (0: linear) over the embeddings standardized with the training split's statistics.

    With a `world` of several processes (torchrun; every rank constructs the same Experiment and
    calls run()), each rank trains its micro-batch of every batch (DistributedDataParallel), infers
    its share of the candidates and selects through the distributed ops; rank 0 alone writes the run
    directory and shows progress, and every rank resumes from what rank 0 reads there."""

    def __init__(self, config: ExperimentConfig, run_dir: str | Path,
                 data: ImageArrays | FeatureArrays | None = None, world: World | None = None):
        self.world = world if world is not None else World()
        self.config = config.resolved(self.world.size)
        self.store = RunStore(run_dir, writes=self.world.is_main)  # refuses "" (which Path reads as ".")
        self.run_dir = self.store.run_dir
        self.store.check_experiment(self.config.identity())  # before loading data: a wrong --run-dir fails fast
        self.device = self.world.device if self.world.size > 1 else self.config.torch_device()
        self.progress = self.config.progress and self.world.is_main
        if self.world.size > 1:
            unsharded = [name for name in self.config.strategies if not strategy_class(name).sharded]
            if unsharded:
                raise ConfigError(f"strategies {', '.join(unsharded)} do not run on a pool split across processes; "
                                  "run them in one process")
        self.data = self._load_data(data)
        if isinstance(self.data, FeatureArrays) != is_embeddings(self.config.dataset):
            raise ConfigError(f"dataset {self.config.dataset!r} and the data given "
                              f"({type(self.data).__name__} {self.data.name!r}) are not the same kind: "
                              "fixed embeddings are named embeddings:<file.npz>")
        # The data are part of the identity too: a rewritten file or folder at the same path is not
        # the experiment the run directory holds.
        self.identity = {**self.config.identity(), "data_digest": _data_digest(self.data)}
        self.store.check_experiment(self.identity)
        fixed_in = getattr(self.data, "in_classes", None)
        self.num_in = num_in_classes(self.config.split, self.data.num_classes) if fixed_in is None else len(fixed_in)
        needed = self.config.budget * (self.config.rounds + 1)
        # The pool size depends on the seed only through rounding; check each seed's split up front.
        self.splits = {}
        for seed in self.config.seeds:
            try:
                split = make_open_set(self.data.train_labels, self.data.num_classes, self.num_in,
                                      self.config.noise, self.config.budget, seed, in_classes=fixed_in)
            except ValueError as err:
                raise ConfigError(str(err)) from err
            if needed > len(split.pool):
                raise ConfigError(f"budget {self.config.budget} x (rounds {self.config.rounds} + the initial set) = "
                                  f"{needed} examples, more than the pool holds ({len(split.pool)})")
            if not np.isin(self.data.test_labels, split.in_classes).any():
                raise ConfigError(f"the test split holds no example of the IN classes {split.in_classes} (seed "
                                  f"{seed}), so no accuracy can be measured; give a test split with examples of every "
                                  "class")
            self.splits[seed] = split
        self._check_memory()
        if isinstance(self.data, FeatureArrays):
            mean, std = DeviceFeatures.feature_stats(self.data.train_feats)
            self.train_images = DeviceFeatures(self.data.train_feats, mean, std, self.device)
            self.test_images = DeviceFeatures(self.data.test_feats, mean, std, self.device)
        else:
            mean, std = DeviceImages.channel_stats(self.data.train_images)
            self.train_images = DeviceImages(self.data.train_images, mean, std, self.device, self.data.flip)
            self.test_images = DeviceImages(self.data.test_images, mean, std, self.device, self.data.flip)
        self._round_zero = {}
        self._caches = {}
        for name in self.config.strategies:  # refuse a resume with other options before running anything
            for seed in self.config.seeds:
                self.store.run(name, seed).check_options(self.identity, self._options(name))
        # Nothing is written until run(): experiment.json is recorded when the runs start.

    def _options(self, name: str) -> dict:
        return dataclasses.asdict(self.config.strategy_options(name))

    def _check_memory(self) -> None:
        """Refuse an experiment whose data and target-model training cannot fit the device's memory
        (a --width or --batch-size off by orders of magnitude), before anything is allocated or written."""
        cfg, data = self.config, self.data
        features = isinstance(data, FeatureArrays)
        train, test = (data.train_feats, data.test_feats) if features else (data.train_images, data.test_images)
        data_bytes = (train.size + test.size) * (4 if features else train.itemsize)  # as the device holds them
        sample = train.shape[1:] if features else (train.shape[3], train.shape[1], train.shape[2])
        train_bytes = estimate_train_bytes("head" if features else "resnet18", sample, self.num_in, cfg.width,
                                           cfg.batch_size, cfg.infer_batch)
        # --jobs: every worker process holds the data and trains a model at once
        copies = cfg.jobs if cfg.jobs > 1 else 1
        what = (f"the data ({_memory.human(data_bytes)}) and training the target model (width {cfg.width}, "
                f"batch size {cfg.batch_size}, inference batch {cfg.infer_batch}: about "
                f"{_memory.human(train_bytes)})" + (f", in each of {copies} processes (--jobs)" if copies > 1 else ""))
        try:
            _memory.check(what, copies * (data_bytes + train_bytes), self.device)
        except _memory.InvalidLimit as err:
            raise ConfigError(str(err)) from None
        except _memory.MemoryLimitError as err:
            hint = "; lower --width, --batch-size or --infer-batch" + (" or --jobs" if copies > 1 else "")
            raise ConfigError(f"{err}{hint}") from None

    @contextmanager
    def _session(self, pairs: list[tuple[str, int]]):
        """The run store's session for `pairs` (experiment.json recorded, the runs' locks held), taken
        on rank 0; a refusal there is raised on every rank."""
        with ExitStack() as stack:
            def take() -> None:
                stack.enter_context(self.store.session(self.identity, pairs, wait=self.config.wait,
                                                       on_wait=self._waiting))

            self.world.from_main(take)
            yield

    def _waiting(self, what: str, holder: str) -> None:
        print(f"waiting for {what}: it is being written by {holder}", file=sys.stderr, flush=True)

    def _load_data(self, data):
        """The dataset (`data` if given, else loaded by name), joined with the OOD dataset in the
        cross-dataset setup."""
        cfg = self.config
        load = lambda name: load_dataset(name, cfg.data_root, download=cfg.download, cache_dir=cfg.cache_dir)  # noqa: E731
        data = data if data is not None else load(cfg.dataset)
        if cfg.ood_dataset is None:
            return data
        try:
            return with_ood_dataset(data, load(cfg.ood_dataset))
        except DataError as err:
            raise ConfigError(f"ood_dataset {cfg.ood_dataset!r}: {err}") from err

    def run(self, stop_after_rounds: int | None = None) -> list[dict]:
        """Run (or resume) every (strategy, seed) pair; returns all round records, seed by seed in
        the order of config.strategies. `stop_after_rounds` ends each run after that many completed
        rounds in this call (for tests of resuming). With config.jobs > 1 the runs go to that many
        worker processes (_run_in_jobs), each at torch.get_num_threads() // jobs threads; a single
        run stays in this process at that thread count."""
        pairs = [(name, seed) for seed in self.config.seeds for name in self.config.strategies]
        with self._session(pairs):
            if self.config.jobs > 1 and len(pairs) > 1:
                return self._run_in_jobs(pairs, stop_after_rounds)
            records = []
            with _threads(self._threads_per_run()):
                for name, seed in pairs:
                    records += self.run_one(name, seed, stop_after_rounds)
            return records

    def _threads_per_run(self) -> int:
        return max(1, torch.get_num_threads() // self.config.jobs)

    def _make_strategy(self, name: str, seed: int) -> Strategy:
        options = self.config.strategy_options(name)
        return make_strategy(name, seed=derive_seed(seed, "meta-init"), **dataclasses.asdict(options))

    def _run_in_jobs(self, pairs: list[tuple[str, int]], stop_after_rounds: int | None) -> list[dict]:
        """The runs in config.jobs processes (multiprocessing's spawn: no state shared but the run
        directory and the cache), each with torch.get_num_threads() // jobs threads and one
        Experiment built once per process. Round 0's models are trained first, here and at that
        thread count, so that no two workers train the same one and every run starts from it as in
        one process. Runs whose strategy trains more than the target model (an encoder, a detector)
        are handed out first, so that the longest do not start last. The workers ignore Ctrl-C:
        on Ctrl-C, or when a run fails or a worker dies (raised naming the run), the workers are
        stopped at once; every run keeps its completed rounds (each is saved atomically) and a rerun
        resumes.
        results.csv is rewritten at the end."""
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        threads = self._threads_per_run()
        with _threads(threads):
            for name, seed in pairs:
                split = self.splits[seed]
                labeled_in = split.initial_labeled[split.is_in[split.initial_labeled]]
                self._train(seed, 0, labeled_in, self._make_strategy(name, seed))  # trained once per recipe
        worker_config = dataclasses.replace(self.config, jobs=1, progress=False)
        order = sorted(pairs, key=lambda pair: not strategy_class(pair[0]).trains_extra_models)
        results = {}
        executor = ProcessPoolExecutor(self.config.jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_worker,
                                       initargs=(worker_config, str(self.run_dir), self.data, threads, os.getpid()))
        try:
            futures = {executor.submit(_run_job, (name, seed, stop_after_rounds)): (name, seed) for name, seed in order}
            for future in progress_bar(as_completed(futures), total=len(order), disable=not self.progress,
                                       desc=f"runs ({self.config.jobs} processes x {threads} threads)"):
                name, seed = futures[future]
                _, _, records, error = future.result()
                if isinstance(error, Exception):
                    raise type(error)(f"run {name} seed {seed}: {error}")
                if error is not None:
                    raise RuntimeError(f"run {name} seed {seed} failed in its worker process: {error}")
                results[(name, seed)] = records
        except BrokenProcessPool:
            raise WorkerDied("a worker process died without a result (killed, or out of memory); every run keeps "
                             "its completed rounds: rerun the same command to resume") from None
        finally:
            for process in list((getattr(executor, "_processes", None) or {}).values()):
                process.terminate()  # at once: a failed run or Ctrl-C does not wait for the others
            executor.shutdown(wait=True, cancel_futures=True)
            self.store.write_results(self.identity)
        return [record for pair in pairs for record in results[pair]]

    # ----------------------------------------------------------------------------------------------

    def run_one(self, strategy_name: str, seed: int, stop_after_rounds: int | None = None) -> list[dict]:
        """Run (or resume) one (strategy, seed) run, holding its lock; returns its round records."""
        with self._session([(strategy_name, seed)]):  # a no-op where run() holds it
            return self._run_one(strategy_name, seed, stop_after_rounds)

    def _run_one(self, strategy_name: str, seed: int, stop_after_rounds: int | None) -> list[dict]:
        cfg, split = self.config, self.splits[seed]
        options = self._options(strategy_name)
        strategy = self._make_strategy(strategy_name, seed)
        run = self.store.run(strategy_name, seed)
        run.check_options(self.identity, options)  # again, now that this process holds the run
        state = self.world.from_main(lambda: run.load(self.identity, options))  # one state for every rank
        if state is not None:  # the labeled set it continues from, checked before anything is written
            try:
                labeled = self._labeled_set(split, state["labeled"])
            except (ValueError, TypeError, IndexError) as err:
                raise RunFileError(f"checkpoint {str(run.checkpoint_path)!r}: its labeled set does not fit this "
                                   f"experiment's pool ({first_line(err)}); delete it to rerun this run from the "
                                   "start") from None
        else:  # round 0's model loaded (and checked) or trained before the run writes anything
            self._train(seed, 0, split.initial_labeled[split.is_in[split.initial_labeled]], strategy)
        run.write_config({**dataclasses.asdict(cfg), "strategy": strategy_name, "seed": seed,
                          "torch_threads": torch.get_num_threads(),
                          "strategy_options": options, "num_in_classes": self.num_in,
                          "in_classes": split.in_classes, "split_notes": split.notes},
                         models=state["models"] if state is not None else {})
        if state is not None:
            try:
                strategy.load_state_dict(state["strategy"])
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise RunFileError(f"checkpoint {str(run.checkpoint_path)!r}: the strategy's state does not load "
                                   f"({first_line(err)}); delete it to rerun this run from the start") from None
            run.write_outputs(self.identity, state)  # the last save may have stopped before the mirrors
        else:
            state = {"labeled": split.initial_labeled.tolist(), "records": [], "queries": [], "strategy": {},
                     "models": {}}
            labeled = self._labeled_set(split, state["labeled"])
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        done_here = 0
        rounds = progress_bar(range(len(state["records"]), cfg.rounds + 1), desc=f"{strategy_name} seed {seed}",
                              disable=not self.progress, initial=len(state["records"]), total=cfg.rounds + 1)
        for r in rounds:
            if stop_after_rounds is not None and done_here >= stop_after_rounds:
                break
            cache = self._run_cache(seed)
            cache.models.clear()  # what this round uses
            record, query = self._round(strategy, strategy_name, seed, r, labeled, run)
            state["records"].append(record)
            if query is not None:
                state["queries"].append(query.tolist())
                labeled.label(query, split.is_in[query], name="the query")
                state["labeled"] = labeled.labeled.tolist()
            state["strategy"] = strategy.state_dict()
            if r == 0:
                digest = self._round_zero[(seed, self.target_recipe(strategy))][2]
                if digest is not None:
                    state["models"]["round-0 target model"] = digest
            state["models"].update(cache.models)
            run.save_round(self.identity, options, state)
            done_here += 1
        return state["records"]

    @staticmethod
    def _labeled_set(split, labeled: list[int]) -> LabeledSet:
        """The labeled set of `labeled` (global train indices) in the split's pool, with the oracle's
        answers (IndexError for a row beyond the training split, ValueError for one outside the pool)."""
        rows = np.asarray(labeled, dtype=np.int64)
        return LabeledSet(len(split.is_in), rows, split.is_in[rows], pool=split.pool)

    def _round(self, strategy: Strategy, strategy_name: str, seed: int, r: int, labeled_set: LabeledSet, run):
        cfg, split = self.config, self.splits[seed]
        timings = {}
        train_in_labels, test_in_labels = self._in_labels(seed)
        labeled, labeled_in = labeled_set.labeled, labeled_set.labeled_in

        tick = time.perf_counter()
        model, train_loss = self._train(seed, r, labeled_in, strategy)[:2]
        timings["time_train"] = time.perf_counter() - tick

        tick = time.perf_counter()
        test_rows = np.flatnonzero(test_in_labels >= 0)
        accuracy = phases.evaluate(model, self.test_images, test_rows, test_in_labels[test_rows], cfg.infer_batch)
        timings["time_eval"] = time.perf_counter() - tick

        record = {"strategy": strategy_name, "seed": seed, "round": r, "dataset": cfg.dataset,
                  "ood_dataset": cfg.ood_dataset, "noise": cfg.noise,
                  "split": cfg.split if cfg.ood_dataset is None else None, "budget": cfg.budget,
                  "target_recipe": self.target_recipe(strategy), "test_accuracy": accuracy, "train_loss": train_loss,
                  "labeled_in": int(len(labeled_in)), "labeled_ood": int(len(labeled) - len(labeled_in))}
        query = None
        if r < cfg.rounds:
            tick = time.perf_counter()
            view = phases.infer_view(model, self.train_images, labeled_set, train_in_labels, r,
                                     torch.Generator().manual_seed(derive_seed(seed, r, "select")),
                                     self._run_cache(seed), world=self.world, batch_size=cfg.infer_batch,
                                     train_config=self._train_config())
            timings["time_infer"] = time.perf_counter() - tick

            tick = time.perf_counter()
            selection, query, positions = phases.select(strategy, view, cfg.budget, strategy_name)
            timings["time_select"] = time.perf_counter() - tick
            gather = (lambda t: t) if view.shard is None else view.shard.gather  # every rank's rows
            columns = {k: gather(v).cpu().numpy() for k, v in selection.columns.items()}
            if selection.scores is not None:
                columns["score"] = gather(selection.scores).cpu().numpy()
            candidates = (view.candidates if view.shard is None else view.shard.candidates).numpy()
            candidate_is_in = split.is_in[candidates]
            run.save_scores(r, candidates=candidates, query=query, is_in=candidate_is_in, **columns)
            # How well each score the strategy computed separates IN from OOD candidates (Table 9)
            for name in ("purity", "informativeness"):
                if name in columns:
                    record[f"{name}_auroc"] = auroc(columns[name], candidate_is_in)
            if cfg.purity_diagnostics:
                for name in PURITY:
                    if isinstance(self.data, FeatureArrays) and name in NEEDS_IMAGES:
                        continue
                    record[f"auroc_{name}"] = auroc(gather(purity(name, view)).cpu().numpy(), candidate_is_in)

            query_in, losses = phases.label(view, query, positions, split.is_in, train_in_labels)
            tick = time.perf_counter()
            record.update(phases.learn(strategy, view, selection, positions, losses, derive_seed(seed, r, "meta-train")))
            timings["time_meta"] = time.perf_counter() - tick
            record.update({"query_in": int(query_in.sum()), "query_ood": int(len(query) - query_in.sum()),
                           "query_in_percent": 100.0 * float(query_in.mean())})
            record.update(class_balance(train_in_labels[query[query_in]], self.num_in))
            record.update(selection.extra)
        record.update({k: round(v, 4) for k, v in timings.items()})
        return record, query

    def _run_cache(self, seed: int) -> RunCache:
        """One cache per seed: its pool (and so its encoder) is the same for every strategy."""
        if seed not in self._caches:
            directory = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
            # the encoder is trained in the target model's micro-batches (data-parallel under torchrun)
            overrides = {"epochs": self.config.encoder_epochs, "micro_batches": self.config.micro_batches}
            pool = self.splits[seed].pool
            train = self.data.train_feats if isinstance(self.data, FeatureArrays) else self.data.train_images
            self._caches[seed] = RunCache(self.config.dataset, seed, pool, directory, array_digest(train[pool]),
                                          overrides,
                                          show_progress=self.progress, world=self.world)
        return self._caches[seed]

    def _train_config(self) -> TrainConfig:
        cfg = self.config
        return TrainConfig(cfg.iterations, cfg.batch_size, cfg.lr, micro_batches=cfg.micro_batches,
                           batching=cfg.batching)

    def _loss_module(self, strategy: Strategy) -> bool:
        """Whether the target model carries learning loss's module: where the strategy uses it, or for
        every strategy with loss_module "all" (so that every strategy trains the same model)."""
        return strategy.uses_loss_module or self.config.loss_module == "all"

    def target_recipe(self, strategy: Strategy) -> str:
        """The name of the target model's recipe (records and the round-0 model's file): the
        architecture, "-loss-module" where it carries one."""
        arch = model_arch(self.train_images)
        return ("resnet" if arch == "resnet18" else arch) + ("-loss-module" if self._loss_module(strategy) else "")

    def _in_labels(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Per example of the train and of the test split: its IN label 0..K-1 (in the order of the
        seed's IN classes), -1 for OOD."""
        mapping = np.full(self.data.num_classes, -1, np.int64)
        mapping[self.splits[seed].in_classes] = np.arange(self.num_in)
        return mapping[self.data.train_labels], mapping[self.data.test_labels]

    def _train(self, seed: int, r: int, labeled_in: np.ndarray, strategy: Strategy):
        """A fresh target model trained on the labeled IN examples. Round 0 starts from the same
        initial labeled set for every strategy, so its model is trained once per seed and recipe
        (with or without the loss module), saved in the run directory and loaded by every strategy
        of the seed, in this process or a later one: on a GPU, where training is not bit-for-bit
        repeatable, a resumed run still starts from the very model the others did."""
        cfg = self.config
        arch = model_arch(self.train_images)
        recipe = self.target_recipe(strategy)
        if r == 0 and (seed, recipe) in self._round_zero:
            return self._round_zero[(seed, recipe)]
        if r > 0:
            return self._train_new(seed, r, labeled_in, strategy) + (None,)
        with self.store.round_zero_lock(seed, on_wait=self._waiting):  # one process trains it, the others wait
            loaded = self.world.from_main(lambda: self.store.load_round_zero(self.identity, seed, recipe))
            if loaded is not None:
                saved, digest = loaded
                model = make_model(self.num_in, self.train_images.images.shape[1], self.device,
                                   derive_seed(seed, r, "model-init"), arch=arch,
                                   loss_module=self._loss_module(strategy), width=cfg.width)
                try:
                    model.load_state_dict(saved["model"])
                except RuntimeError as err:
                    raise RunFileError(f"the round-0 model {str(self.store.round_zero_path(seed, recipe))!r} does "
                                       f"not fit this experiment's model ({first_line(err)}); delete it to train "
                                       "round 0 again") from None
                result = model, float(saved["train_loss"]), digest
            else:
                model, loss = self._train_new(seed, r, labeled_in, strategy)
                digest = self.store.save_round_zero(self.identity, seed, recipe, model.state_dict(), loss)
                result = model, loss, digest
        self._round_zero[(seed, recipe)] = result
        return result

    def _train_new(self, seed: int, r: int, labeled_in: np.ndarray, strategy: Strategy):
        return phases.train(self.num_in, self.train_images, labeled_in, self._in_labels(seed)[0][labeled_in],
                            self._train_config(), derive_seed(seed, r, "model-init"), derive_seed(seed, r, "train"),
                            self.device, desc=f"round {r} train", show_progress=self.progress, world=self.world,
                            loss_module=self._loss_module(strategy), width=self.config.width)


@contextmanager
def _threads(count: int):
    """torch's CPU thread count set to `count` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_WORKER: dict = {}


def _die_with_parent(parent: int) -> None:
    """On Linux, this process is killed when its parent dies (SIGKILL included): the parent's run
    locks die with it, and so must the workers writing under them."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _start_worker(config: ExperimentConfig, run_dir: str, data, threads: int, parent: int) -> None:
    """A worker process of Experiment._run_in_jobs: Ctrl-C is the parent's to handle; one Experiment."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        _WORKER["experiment"] = Experiment(config, run_dir, data=data)
        _WORKER["experiment"].store.locks = False  # the parent holds every run's lock while its workers live
    except (ConfigError, DataError, RunFileError, _memory.MemoryLimitError) as err:  # named errors stay named
        _WORKER["error"] = err
    except Exception as err:  # noqa: BLE001 (a worker whose initializer raises breaks the whole pool)
        _WORKER["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"


def _run_job(task: tuple[str, int, int | None]) -> tuple[str, int, list[dict] | None, str | Exception | None]:
    """One (strategy, seed) run in a worker: (name, seed, its records, None), or (name, seed, None,
    a named error (ConfigError, RunFileError, ...) or any other error's text with its traceback)."""
    import traceback

    name, seed, stop_after_rounds = task
    if "error" in _WORKER:
        return name, seed, None, _WORKER["error"]
    try:
        return name, seed, _WORKER["experiment"].run_one(name, seed, stop_after_rounds), None
    except (ConfigError, DataError, RunFileError, _memory.MemoryLimitError) as err:  # named errors stay named
        return name, seed, None, err
    except Exception as err:  # noqa: BLE001 (reported by the parent, naming the run)
        return name, seed, None, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"


def class_balance(labels: np.ndarray, num_classes: int) -> dict:
    """How the IN examples of a query spread over the IN classes: their count per class, and the
    normalized entropy of those counts (1: every class equally, 0: one class; nan without an IN
    example or with one class)."""
    counts = np.bincount(labels, minlength=num_classes)
    total = counts.sum()
    if total == 0 or num_classes < 2:
        balance = float("nan")
    else:
        shares = counts[counts > 0] / total
        balance = max(0.0, float(-(shares * np.log(shares)).sum() / np.log(num_classes)))  # not -0.0
    return {"query_in_classes": counts.tolist(), "query_class_balance": balance}


def _data_digest(data: ImageArrays | FeatureArrays) -> str:
    """sha256 over the train and test inputs and labels, in that order."""
    inputs = ("train_feats", "test_feats") if isinstance(data, FeatureArrays) else ("train_images", "test_images")
    digest = hashlib.sha256()
    for name in (inputs[0], "train_labels", inputs[1], "test_labels"):
        digest.update(array_digest(getattr(data, name)).encode())
    return digest.hexdigest()[:16]
