"""The command line: every option given a wrong value exits with code 2 and names the option; a run
killed with SIGKILL at random moments and rerun ends as an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mqnet_fast.cli import main

RUN = ["run", "--quiet", "--rounds", "1", "--iterations", "1", "--budget", "10", "--strategies", "random"]
MQ = ["--strategies", "mqnet"]

# (arguments after the subcommand's required ones, the option's name as the message may spell it)
RUN_CASES = [
    (["--dataset", "nope"], "dataset"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "data root"),
    (["--dataset", "embeddings:MISSING"], "embeddings"),
    (["--dataset", "embeddings:FILE"], "embeddings"),
    (["--dataset", "imagefolder:MISSING"], "imagefolder"),
    (["--split", "4-6"], "split"),
    (["--split", "0:6"], "split"),
    (["--noise", "1.5"], "noise"),
    (["--ood-dataset", "digits"], "ood_dataset 'digits' is the IN dataset itself"),
    (["--ood-dataset", "nope"], "ood_dataset 'nope': unknown dataset"),
    (["--ood-dataset", "embeddings:FILE"], "ood_dataset: the cross-dataset setup converts images"),
    (["--ood-dataset", "imagefolder:MISSING", "--split", "2:8"], "with ood_dataset every class"),
    (["--noise", "x"], "--noise"),
    (["--strategies", "nope"], "strategy"),
    (["--strategies", ""], "strategies"),
    (["--seeds", "a"], "--seeds"),
    (["--seeds", "-1"], "seeds"),
    (["--seeds", "1,1"], "seeds"),
    (["--budget", "0"], "budget"),
    (["--budget", "x"], "--budget"),
    (["--budget", "100000"], "budget"),
    (["--rounds", "-1"], "rounds"),
    (["--iterations", "0"], "iterations"),
    (["--batch-size", "0"], "batch_size"),
    (["--lr", "0"], "lr"),
    (["--lr", "nan"], "lr"),
    (["--encoder-epochs", "0"], "encoder_epochs"),
    (["--width", "0"], "width"),
    (["--micro-batches", "5"], "micro_batches (5) must divide batch_size (64)"),
    (["--micro-batches", "0"], "micro_batches must be an integer >= 1"),
    (["--infer-batch", "0"], "infer_batch must be an integer >= 1"),
    (["--device", "gpu7"], "device"),
    (MQ + ["--purity", "x"], "purity"),
    (MQ + ["--informativeness", "x"], "informativeness"),
    (MQ + ["--standardize", "x"], "standardize"),
    (MQ + ["--meta-epochs", "0"], "meta_epochs"),
    (MQ + ["--meta-min-steps", "x"], "--meta-min-steps"),
    (MQ + ["--meta-margin", "-1"], "meta_margin"),
    (["--purity", "knn"], "purity"),
    (["--cache-dir", "FILE"], "cache_dir"),
    (["--run-dir", "FILE"], "run_dir"),
]
SELECT_CASES = [
    (["--embeddings", "MISSING"], "--embeddings"),
    (["--embeddings", "FILE"], "--embeddings"),
    (["--strategy", "nope"], "--strategy"),
    (["--budget", "0"], "--budget"),
    (["--budget", "x"], "--budget"),
    (["--budget", "1000"], "--budget"),
    (["--out", "DIR"], "--out"),
    (["--seed", "x"], "--seed"),
    (["--seed", "100000000000000000000000"], "--seed"),
    (["--embeddings", "SHORT_PROBS"], "'probs' must have one row per row of 'feats'"),
    (["--embeddings", "BAD_LABELED"], "'labeled'"),
    (["--strategy", "mqnet", "--purity", "knn", "--meta-margin", "-1"], "meta_margin"),
    (["--strategy", "mqnet", "--purity", "knn", "--standardize", "x"], "standardize"),
    (["--purity", "knn"], "purity"),
    (["--strategy", "mqnet", "--purity", "csi"], "purity"),
]
REPORT_CASES = [
    (["MISSING"], "run directory"),
    (["DIR"], "run directory"),
    (["RUN", "--out", "FILE"], "--out"),
]


def _fill(args, tmp_path):
    (tmp_path / "file.txt").write_text("not a directory\n")
    (tmp_path / "dir").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "short.npz", feats=rng.normal(size=(30, 4)), probs=rng.dirichlet(np.ones(3), 20))
    np.savez(tmp_path / "bad-labeled.npz", feats=rng.normal(size=(30, 4)), labeled=np.array([0.5, 2.0]))
    names = {"FILE": tmp_path / "file.txt", "MISSING": tmp_path / "missing", "DIR": tmp_path / "dir",
             "RUN": tmp_path / "done", "SHORT_PROBS": tmp_path / "short.npz",
             "BAD_LABELED": tmp_path / "bad-labeled.npz"}
    out = []
    for a in args:
        prefix, _, rest = a.rpartition(":")
        out.append(f"{prefix}:{names[rest]}" if prefix and rest in names else str(names.get(a, a)))
    return out


def _exit_code(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, name", RUN_CASES, ids=[" ".join(a) for a, _ in RUN_CASES])
def test_run_option_with_a_wrong_value(tmp_path, capsys, args, name):
    argv = RUN + ["--run-dir", str(tmp_path / "run")] + _fill(args, tmp_path)
    code, err = _exit_code(argv, capsys)
    assert code == 2 and name in err, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))  # nothing written


def _embeddings(tmp_path):
    path = tmp_path / "emb.npz"
    rng = np.random.default_rng(0)
    np.savez(path, feats=rng.normal(size=(30, 4)), probs=rng.dirichlet(np.ones(3), 30), labeled=np.array([0, 5]),
             labeled_is_in=np.array([True, False]))
    return path


@pytest.mark.parametrize("args, name", SELECT_CASES, ids=[" ".join(a) for a, _ in SELECT_CASES])
def test_select_option_with_a_wrong_value(tmp_path, capsys, args, name):
    given = dict(zip(args[::2], args[1::2]))
    base = {"--embeddings": str(_embeddings(tmp_path)), "--strategy": "coreset", "--budget": "3",
            "--out": str(tmp_path / "picks.csv")}
    argv = ["select"] + [x for k, v in base.items() if k not in given for x in (k, v)] + _fill(args, tmp_path)
    code, err = _exit_code(argv, capsys)
    assert code == 2 and name in err, err


@pytest.mark.parametrize("args, name", REPORT_CASES, ids=[" ".join(a) for a, _ in REPORT_CASES])
def test_report_option_with_a_wrong_value(tmp_path, capsys, args, name):
    assert main(RUN + ["--rounds", "0", "--run-dir", str(tmp_path / "done")]) == 0
    code, err = _exit_code(["report"] + _fill(args, tmp_path), capsys)
    assert code == 2 and name in err, err


KILL_RUN = ["run", "--quiet", "--dataset", "digits", "--strategies", "random,conf,mqnet", "--rounds", "3",
            "--budget", "12", "--iterations", "20", "--purity", "knn", "--informativeness", "conf",
            "--meta-epochs", "2", "--meta-min-steps", "20"]


def _outputs(run_dir):
    out = {}
    for name in ("random", "conf", "mqnet"):
        records = json.loads((run_dir / name / "seed0" / "metrics.json").read_text())
        out[name] = ([{k: v for k, v in r.items() if not k.startswith("time_")} for r in records],
                     json.loads((run_dir / name / "seed0" / "queries.json").read_text()))
    return out


def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_results(tmp_path):
    command = [sys.executable, "-m", "mqnet_fast"] + KILL_RUN
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tick = time.perf_counter()
    subprocess.run(command + ["--run-dir", str(tmp_path / "whole")], check=True, env=env, timeout=600)
    duration = time.perf_counter() - tick
    moments = random.Random(0)
    kills = 0
    while kills < 4:  # killed at random moments, early and late, until four kills or the run is done
        process = subprocess.Popen(command + ["--run-dir", str(tmp_path / "killed")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=moments.uniform(0.1, 0.6) * duration)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        else:
            assert process.returncode == 0
            break
    assert kills >= 2, "the run finished before it was killed twice"
    assert subprocess.run(command + ["--run-dir", str(tmp_path / "killed")], env=env, timeout=600).returncode == 0
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "whole")
    whole_csv = (tmp_path / "whole" / "results.csv").read_text().splitlines()
    killed_csv = (tmp_path / "killed" / "results.csv").read_text().splitlines()
    assert len(whole_csv) == len(killed_csv) == 1 + 3 * 4
