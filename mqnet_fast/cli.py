"""`mqnet-fast run` and `mqnet-fast report` (also `python -m mqnet_fast`)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from mqnet_fast.data import DataError
from mqnet_fast.experiment import DEFAULTS, ExperimentConfig, ConfigError, Experiment
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
        if isinstance(default, bool) or not isinstance(default, (int, float, str)):
            raise TypeError(f"strategy option {option!r}: the CLI takes int, float and str options")
        group.add_argument("--" + option.replace("_", "-"), dest=f"option_{option}", type=type(default),
                           default=argparse.SUPPRESS, metavar=option.upper(),
                           help=f"{help_text} ({', '.join(owners[option])}; default {default})".lstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mqnet-fast", description="Open-set active learning with MQ-Net.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an open-set AL experiment",
                         description="Run an open-set active-learning experiment; rerunning the same command "
                                     "resumes it after the last completed round.")
    run.add_argument("--dataset", default="digits",
                     help="digits (default, shipped), cifar10, cifar100, or imagefolder:<dir or .tar.gz>")
    run.add_argument("--data-root", help="folder with torchvision's CIFAR files (cifar10/cifar100)")
    run.add_argument("--download", action="store_true", help="download CIFAR into --data-root if missing")
    run.add_argument("--cache-dir", help="where decoded ImageFolder arrays are cached "
                                         "(default $MQNET_FAST_CACHE or ~/.cache/mqnet-fast)")
    run.add_argument("--split", default="4:6", help="IN:OOD class ratio (default 4:6; 40:60 gives the same share)")
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
                                                        "paper: 1000 on CIFAR)")
    run.add_argument("--width", type=int, help="target ResNet-18 width, 64 = standard (default: per dataset, above)")
    _add_strategy_options(run)
    run.add_argument("--device", default="auto", help="auto (GPU if visible), cpu, cuda, cuda:1, ...")
    run.add_argument("--run-dir", required=True, help="where results and checkpoints go")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--purity-diagnostics", action="store_true",
                     help="record the AUROC (IN vs OOD candidates) of every purity score in every round")
    run.add_argument("--report", action="store_true", help="write and print the report when done")

    report = sub.add_parser("report", help="plot and tabulate run directories")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", help="folder for report.png/.md/.csv (default: the first RUN_DIR)")
    return parser


def _report(run_dirs, out) -> None:
    from mqnet_fast.report import write_report

    result = write_report(run_dirs, out)
    print(result["table"], end="")
    print(f"table: {result['markdown']} (CSV: {result['csv']})")
    print(f"plot:  {result['plot']}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            config = ExperimentConfig(
                dataset=args.dataset, split=args.split, noise=args.noise, strategies=args.strategies,
                seeds=args.seeds, budget=args.budget, rounds=args.rounds, iterations=args.iterations,
                batch_size=args.batch_size, lr=args.lr, width=args.width, encoder_epochs=args.encoder_epochs,
                options={k[len("option_"):]: v for k, v in vars(args).items() if k.startswith("option_")},
                data_root=args.data_root, download=args.download, cache_dir=args.cache_dir,
                device=args.device, progress=not args.quiet, purity_diagnostics=args.purity_diagnostics)
            start = time.perf_counter()
            experiment = Experiment(config, args.run_dir)
            for note in {n for split in experiment.splits.values() for n in split.notes}:
                print(f"note: {note}", file=sys.stderr)
            experiment.run()
            print(f"done in {time.perf_counter() - start:.0f} s; results in {args.run_dir}", file=sys.stderr)
            if args.report:
                _report([args.run_dir], None)
        else:
            _report(args.run_dirs, args.out)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"mqnet-fast: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume after the last completed round", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
