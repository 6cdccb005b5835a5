"""`mqnet-fast run`, `select`, `report` and `info` (also `python -m mqnet_fast`).

Every wrong value exits with code 2 and a message that names the option."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from mqnet_fast._memory import MemoryLimitError
from mqnet_fast.data import DataError
from mqnet_fast.io import RunFileError, first_line
from mqnet_fast.experiment import DEFAULTS, ExperimentConfig, ConfigError, Experiment
from mqnet_fast.experiment.runner import WorkerDied
from mqnet_fast.strategies import STRATEGIES


def _list(kind):
    def parse(text: str):
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def _add_strategy_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of the registered strategies (--purity for mqnet's `purity`, ...); a flag
    not given leaves the strategy's default."""
    owners, fields = {}, {}
    for name, cls in STRATEGIES.items():
        for f in dataclasses.fields(cls.Options):
            owners.setdefault(f.name, []).append(name)
            fields.setdefault(f.name, f)
    group = parser.add_argument_group("strategy options")
    for option, f in fields.items():
        default = f.default
        help_text = f.metadata.get("help", "")
        kind = f.metadata.get("type", type(default))  # an option whose default is None names its type
        if isinstance(default, bool) or kind not in (int, float, str):
            raise TypeError(f"strategy option {option!r}: the CLI takes int, float and str options")
        group.add_argument("--" + option.replace("_", "-"), dest=f"option_{option}", type=kind,
                           default=argparse.SUPPRESS, metavar=option.upper(),
                           help=f"{help_text} ({', '.join(owners[option])}; default {default})".lstrip())


def build_parser() -> argparse.ArgumentParser:
    from mqnet_fast import __version__

    parser = argparse.ArgumentParser(prog="mqnet-fast", description="Open-set active learning with MQ-Net.")
    parser.add_argument("--version", action="version", version=f"mqnet-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an open-set AL experiment",
                         description="Run an open-set active-learning experiment; rerunning the same command "
                                     "resumes it after the last completed round.")
    run.add_argument("--dataset", default="digits",
                     help="digits (default, shipped), cifar10, cifar100, imagefolder:<dir or .tar.gz>, or "
                          "embeddings:<file.npz> (arrays train_feats, train_labels, test_feats, test_labels; the "
                          "target model is a head of hidden width --width, 0 = linear)")
    run.add_argument("--data-root", help="folder with torchvision's CIFAR files (cifar10/cifar100)")
    run.add_argument("--download", action="store_true", help="download CIFAR into --data-root if missing")
    run.add_argument("--cache-dir", help="where decoded ImageFolder arrays are cached "
                                         "(default $MQNET_FAST_CACHE or ~/.cache/mqnet-fast)")
    run.add_argument("--split", default="4:6", help="IN:OOD class ratio (default 4:6; 40:60 gives the same share)")
    run.add_argument("--ood-dataset", help="the cross-dataset setup: every class of --dataset is IN and this "
                                           "dataset (any name --dataset takes, images only) supplies the OOD "
                                           "examples, converted to the IN images' size and channels")
    run.add_argument("--noise", type=float, default=0.6, help="OOD share tau of the pool (paper: 0.1 0.2 0.4 0.6)")
    run.add_argument("--strategies", type=_list(str), default=["mqnet"],
                     help=f"comma-separated, from {','.join(STRATEGIES)} (default mqnet)")
    run.add_argument("--seeds", type=_list(int), default=[0], help="comma-separated seeds (default 0)")
    defaults = "; ".join(f"{k}: " + " ".join(f"{o}={v}" for o, v in d.items()) for k, d in DEFAULTS.items())
    run.add_argument("--budget", type=int, help=f"examples queried per round (defaults: {defaults})")
    run.add_argument("--rounds", type=int, help="number of queries")
    run.add_argument("--iterations", type=int, help="SGD iterations of each target-model training")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--lr", type=float, help="target-model learning rate (default: per dataset, above)")
    run.add_argument("--encoder-epochs", type=int, help="epochs of the CSI encoder (default: per dataset; "
                                                        "paper: 1000 on CIFAR; not used on embeddings)")
    run.add_argument("--width", type=int, help="target ResNet-18 width, 64 = standard; on embeddings:<file> the "
                                               "head's hidden units, 0 = linear (default: per dataset, above)")
    run.add_argument("--micro-batches", type=int,
                     help="train each batch as this many parts, each with its own BatchNorm statistics (default: the "
                          "number of processes; give N to reproduce a torchrun run of N processes in one)")
    run.add_argument("--infer-batch", type=int, default=1024,
                     help="rows per inference batch (default 1024); under torchrun the candidates are split "
                          "across the processes at its multiples")
    run.add_argument("--batching", choices=("fill", "distinct"), default="fill",
                     help="fill (default): batches of --batch-size, a smaller labeled set repeated in them (each "
                          "copy augmented on its own); distinct: batches of at most the labeled set, each example "
                          "once, as a DataLoader gives (docs/strategies.md: fill trains better on digits)")
    run.add_argument("--loss-module", choices=("all", "auto"), default="all",
                     help="all (default): every strategy's target model carries learning loss's module, so that "
                          "the strategies compared train the same model; auto: only where the strategy uses it (ll; "
                          "mqnet with informativeness ll), as the published code trains them")
    _add_strategy_options(run)
    run.add_argument("--device", default="auto", help="auto (GPU if visible), cpu, cuda, cuda:1, ...")
    run.add_argument("--run-dir", required=True, help="where results and checkpoints go")
    run.add_argument("--jobs", type=int, default=1,
                     help="(strategy, seed) runs at once, each in its own process with 1/N of the CPU threads "
                          "(default 1). Round 0 is trained first, at that thread count too, so --jobs N gives what "
                          "one process gives at the same threads per run (a run's numbers depend on its threads)")
    run.add_argument("--wait", action="store_true",
                     help="if another process is writing one of these runs, wait for it to end, then resume what it "
                          "left (default: exit naming that process)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--purity-diagnostics", action="store_true",
                     help="record the AUROC (IN vs OOD candidates) of every purity score in every round")
    run.add_argument("--report", action="store_true", help="write and print the report when done")

    select = sub.add_parser("select", help="pick examples from embeddings you have (no training)",
                            description="Run one strategy on the arrays of an .npz file and write its picks.")
    select.add_argument("--embeddings", required=True, metavar="FILE.npz",
                        help="arrays: feats (N, d); optional probs or logits (N, K); labeled (L,) row indices "
                             "of the labeled rows; optional labeled_is_in (L,) bool; optional purity and "
                             "informativeness (N,) (MQ-Net's P and I, or LL's predicted loss)")
    select.add_argument("--strategy", required=True, choices=list(STRATEGIES), metavar="STRATEGY",
                        help=f"one of {', '.join(STRATEGIES)}")
    select.add_argument("--budget", type=int, required=True, help="number of rows to pick")
    select.add_argument("--out", required=True, metavar="PICKS.csv",
                        help="one row per pick, in pick order: index (row of FILE), score; - for standard output "
                             "(a regular file or a new path; links, devices and the input are refused)")
    select.add_argument("--seed", type=int, default=0, help="seed of the random draws (random, badge)")
    _add_strategy_options(select)

    sub.add_parser("info", help="version, build, backends and devices")

    report = sub.add_parser("report", help="plot and tabulate run directories")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", help="folder for report.png/.md/.csv (default: the first RUN_DIR)")
    return parser


def _report(run_dirs, out) -> None:
    from mqnet_fast.report import write_report

    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out!r} exists and is not a directory")

    result = write_report(run_dirs, out)
    for path, why in result["skipped"]:
        print(f"mqnet-fast: skipped {path}: {why}", file=sys.stderr)
    print(result["table"], end="")
    print(f"table: {result['markdown']} (CSV: {result['csv']})")
    print(f"plot:  {result['plot']}")


def _options(args) -> dict:
    return {k[len("option_"):]: v for k, v in vars(args).items() if k.startswith("option_")}


def _select(args) -> None:
    import numpy as np
    import torch

    from mqnet_fast.api import select
    from mqnet_fast.io import atomic_write_text, check_output_path, read_npz
    from mqnet_fast.labeled import PER_ROW, LabeledSet

    path = args.embeddings
    # before the work, as every check of the options ("-": standard output)
    out = None if args.out == "-" else check_output_path(args.out, "--out", inputs=(path,))
    arrays = read_npz(path, f"--embeddings {path!r}", error=ConfigError)
    known = {*PER_ROW, "labeled", "labeled_is_in"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise ConfigError(f"--embeddings {path!r}: unknown array(s) {', '.join(unknown)}; expected "
                          f"{', '.join(sorted(known))}")
    if "feats" not in arrays:
        raise ConfigError(f"--embeddings {path!r} has no array 'feats' (N, d)")
    for name, ndim in (("feats", 2), ("probs", 2), ("logits", 2), ("purity", 1), ("informativeness", 1)):
        if name in arrays and arrays[name].ndim != ndim:
            raise ConfigError(f"--embeddings: {name!r} must be {ndim}-D ({'rows, columns' if ndim == 2 else 'one per row'}),"
                              f" got shape {arrays[name].shape}")
    n = arrays["feats"].shape[0]
    for name, array in arrays.items():
        rows_expected = name in PER_ROW
        if rows_expected and (array.ndim == 0 or array.shape[0] != n):
            raise ConfigError(f"--embeddings: {name!r} must have one row per row of 'feats' ({n}), got shape "
                              f"{array.shape}")
    try:  # the pool, its labeled rows and the candidates (the unlabeled rows)
        pool = LabeledSet(n, arrays.pop("labeled", np.zeros(0, np.int64)), arrays.pop("labeled_is_in", None),
                          name="'labeled'")
    except (TypeError, ValueError, IndexError) as err:
        raise ConfigError(f"--embeddings: {err}") from None
    inputs = pool.inputs(**{k: v for k, v in arrays.items() if k in PER_ROW})
    if not 0 <= args.seed < 2**63:
        raise ConfigError(f"--seed must be in [0, 2**63), got {args.seed}")
    try:
        pool.check_budget(args.budget, name="--budget")
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None

    try:
        selection = select(args.strategy, args.budget, generator=torch.Generator().manual_seed(args.seed),
                           options=_options(args), **inputs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"select --strategy {args.strategy}: {err}") from None
    picks = selection.indices.cpu().numpy()
    scores = (selection.scores.cpu().numpy()[picks] if selection.scores is not None
              else np.full(len(picks), np.nan))
    lines = ["index,score"] + [f"{int(row)},{s:.9g}" for row, s in zip(pool.rows(picks), scores)]
    if out is None:
        print("\n".join(lines))
    else:
        atomic_write_text(out, "\n".join(lines) + "\n")
    print(f"{len(picks)} picks of {n - len(pool)} unlabeled rows written to "
          f"{'standard output' if out is None else args.out}", file=sys.stderr)


def _info() -> None:
    from mqnet_fast import info
    from mqnet_fast.scores import INFORMATIVENESS, PURITY

    info.main()
    print(f"strategies: {', '.join(STRATEGIES)}")
    print(f"purity scores: {', '.join(PURITY)}; informativeness scores: {', '.join(INFORMATIVENESS)}")


def _world(device: str):
    """This process's World: one process, or under torchrun (WORLD_SIZE > 1) a process group, NCCL
    with one GPU per rank (LOCAL_RANK) where CUDA is used, gloo on the CPU."""
    import torch
    import torch.distributed as dist

    from mqnet_fast.world import World

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if dist.is_initialized():
        raise ConfigError("run: a torch.distributed process group is already set up in this process")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if device not in ("auto", "cuda"):
            raise ConfigError(f"device {device!r}: under torchrun each rank uses the GPU of its LOCAL_RANK; give "
                              "--device cuda or auto")
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        local = torch.device("cpu")
        dist.init_process_group("gloo")
    return World(device=local)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            _info()
        elif args.command == "select":
            _select(args)
        elif args.command == "run":
            world = _world(args.device)
            config = ExperimentConfig(
                dataset=args.dataset, split=args.split, ood_dataset=args.ood_dataset, noise=args.noise, strategies=args.strategies,
                seeds=args.seeds, budget=args.budget, rounds=args.rounds, iterations=args.iterations,
                batch_size=args.batch_size, lr=args.lr, width=args.width, encoder_epochs=args.encoder_epochs,
                micro_batches=args.micro_batches, infer_batch=args.infer_batch, batching=args.batching,
                loss_module=args.loss_module, options=_options(args),
                data_root=args.data_root, download=args.download, cache_dir=args.cache_dir,
                device=args.device, progress=not args.quiet, jobs=args.jobs,
                purity_diagnostics=args.purity_diagnostics, wait=args.wait)
            start = time.perf_counter()
            experiment = Experiment(config, args.run_dir, world=world)
            main_rank = world.is_main
            for note in {n for split in experiment.splits.values() for n in split.notes} if main_rank else ():
                print(f"note: {note}", file=sys.stderr)
            experiment.run()
            if world.size > 1:
                world.barrier()  # every rank done before any tears the group down (_leave_group)
            if main_rank:
                processes = world.size if world.size > 1 else config.jobs
                print(f"done in {time.perf_counter() - start:.0f} s; results in {args.run_dir}"
                      + (f" ({processes} processes)" if processes > 1 else ""), file=sys.stderr)
            if args.report and main_rank:
                _report([args.run_dir], None)
        else:
            _report(args.run_dirs, args.out)
    except (ConfigError, DataError, RunFileError, MemoryLimitError, FileNotFoundError, WorkerDied) as err:
        print(f"mqnet-fast: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume after the last completed round", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        print(f"mqnet-fast: error: out of memory ({first_line(err)}); lower --batch-size, --infer-batch or --width "
              "(or --jobs), then rerun the same command: a run resumes after its last completed round",
              file=sys.stderr)
        return 2
    finally:
        _leave_group()
    return 0


def _out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation that failed (host or GPU memory)."""
    import torch

    return (isinstance(err, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(err) or "out of memory" in str(err).lower())


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
