"""What a run directory guarantees, tried as an adversarial user would: one writer per run (two real
processes), files bound to the experiment that wrote them, memory and size guards, safe output
paths, and every failure a named error (exit 2, a message naming the file or option and what to do,
no traceback, nothing else in the run directory changed)."""
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mqnet_fast.cli import main
from mqnet_fast.data import load_digits
from mqnet_fast.experiment.split import make_open_set
from mqnet_fast.experiment import ConfigError, Experiment, phases
from mqnet_fast.io import read_seal, save_sealed
from testing import checkpoint_state, tiny_config

BASE = ["run", "--quiet", "--rounds", "1", "--iterations", "2", "--budget", "10", "--encoder-epochs", "1",
        "--meta-epochs", "1", "--meta-min-steps", "2"]


def snapshot(root: Path, leave_out: tuple = ()) -> dict:
    """Every file under `root` with the sha256 of its content, every folder and special file; the
    lock files (.locks: they hold the last holder's pid, and are kept so that no two processes race
    to remove one) and the folders `leave_out` aside."""
    import stat

    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if ".locks" in relative.parts or (relative.parts and relative.parts[0] in leave_out):
            continue
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            out[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(relative)] = stat.filemode(mode)[0] + (os.readlink(path) if path.is_symlink() else "")
    return out


def cli(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished run of random and mqnet (CSI purity: an encoder in the cache) on digits, and one of
    another experiment (noise 0.4) to take files from."""
    root = tmp_path_factory.mktemp("base")
    cache = root / "cache"
    for name, noise in (("run", "0.6"), ("other", "0.4")):
        assert main(BASE + ["--strategies", "random,mqnet", "--noise", noise, "--cache-dir", str(cache),
                            "--run-dir", str(root / name)]) == 0
    return root


def _copy(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path / "b", symlinks=True)
    return tmp_path / "b"


def _reseal(path: Path, change) -> None:
    """Rewrite a sealed file with its identity and a valid checksum around a changed payload (what a
    forger who knows the format writes)."""
    seal = read_seal(path, "file")
    payload = torch.load(io.BytesIO(seal["data"]), weights_only=True)
    save_sealed(path, change(payload), seal["identity"])


def _edit_payload(path: Path) -> None:
    """Change the payload's bytes without updating the checksum (an edit by hand or a damaged disk)."""
    seal = read_seal(path, "file")
    outer = torch.load(path, weights_only=True)
    data = bytearray(seal["data"])
    data[len(data) // 2] ^= 0xFF
    outer["payload"] = torch.frombuffer(data, dtype=torch.uint8)
    torch.save(outer, path)


def _zero_round_zero(path: Path) -> None:
    seal = read_seal(path, "file")
    outer = torch.load(path, weights_only=True)
    saved = torch.load(io.BytesIO(seal["data"]), weights_only=True)
    saved["model"] = {k: torch.zeros_like(v) for k, v in saved["model"].items()}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    outer["payload"] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    torch.save(outer, path)  # the old checksum kept


def _other_width_round_zero(path: Path, tmp: Path) -> None:
    from mqnet_fast.training import make_model

    model = make_model(4, 3, torch.device("cpu"), 0, width=8, loss_module=True)
    _reseal(path, lambda saved: {**saved, "model": model.state_dict()})


def _encoder_entries(root: Path) -> list[Path]:
    return sorted((root / "cache" / "csi-encoder").glob("*.pt"))


# (name, how the copy of the base directory is tampered with, extra arguments of the run, what the
# message must say); every run targets b/run with the base command
RUN_CASES = [
    ("empty checkpoint", lambda b: (b / "run/random/seed0/checkpoint.pt").write_bytes(b""), [],
     "checkpoint.pt' cannot be read"),
    ("checkpoint without keys", lambda b: _reseal(b / "run/random/seed0/checkpoint.pt",
                                                  lambda s: {k: v for k, v in s.items() if k != "queries"}), [],
     "is not a run state \\('queries' is missing"),
    ("checkpoint of the wrong type", lambda b: _reseal(b / "run/random/seed0/checkpoint.pt", lambda s: [1, 2]), [],
     "is not a run state \\(a list"),
    ("made-up records", lambda b: _reseal(b / "run/random/seed0/checkpoint.pt",
                                          lambda s: {**s, "records": [{"round": 0}]}), [],
     "is not a run state \\(record 0 is of round 0, strategy None"),
    ("checkpoint labeling rows outside the pool", lambda b: _reseal(b / "run/random/seed0/checkpoint.pt",
                                                                  lambda s: {**s, "labeled": s["labeled"] + [10**6]}),
     [], "its labeled set does not fit this experiment's pool"),
    ("edited checkpoint", lambda b: _edit_payload(b / "run/random/seed0/checkpoint.pt"), [],
     "checkpoint.pt' was edited or damaged"),
    ("checkpoint of another experiment", lambda b: shutil.copy(b / "other/random/seed0/checkpoint.pt",
                                                                b / "run/random/seed0/checkpoint.pt"), [],
     "written by another experiment or run \\(experiment.noise: 0.4 there, 0.6 here\\)"),
    ("checkpoint of another strategy", lambda b: shutil.copy(b / "run/random/seed0/checkpoint.pt",
                                                              b / "run/mqnet/seed0/checkpoint.pt"), [],
     "strategy: 'random' there, 'mqnet' here"),
    ("zeroed round-0 model", lambda b: _zero_round_zero(next((b / "run/round0/seed0").glob("*.pt"))),
     ["--strategies", "conf,mqnet"], "the round-0 model .* was edited or damaged"),
    ("round-0 model of another shape", lambda b: _other_width_round_zero(next((b / "run/round0/seed0").glob("*.pt")), b),
     ["--strategies", "conf,mqnet"], "the round-0 model .* does not fit this experiment's model"),
    ("garbage experiment.json", lambda b: (b / "run/experiment.json").write_text("{not json"), [],
     "experiment.json' is not a readable JSON file"),
    ("edited experiment.json", lambda b: (b / "run/experiment.json").write_text(
        (b / "run/experiment.json").read_text().replace('"noise": 0.6', '"noise": 0.2')), [],
     "experiment.json' was edited or damaged"),
    ("corrupt encoder cache entry", lambda b: [p.write_bytes(p.read_bytes()[:-50]) for p in _encoder_entries(b)],
     ["--run-dir", "{b}/fresh", "--strategies", "mqnet"], "the cached CSI encoder .*delete it"),
    ("perturbed encoder cache entry", lambda b: [_edit_payload(p) for p in _encoder_entries(b)],
     ["--run-dir", "{b}/fresh", "--strategies", "mqnet"], "the cached CSI encoder .* was edited or damaged"),
    ("run dir under a file", lambda b: (b / "afile").write_text("x"), ["--run-dir", "{b}/afile/run"],
     "is a file, not a folder"),
    ("empty run dir", lambda b: None, ["--run-dir", ""], "run_dir is empty"),
    ("huge width", lambda b: None, ["--run-dir", "{b}/fresh", "--width", "1000000000"], "lower --width, --batch-size or --infer-batch"),
    ("huge batch size", lambda b: None, ["--run-dir", "{b}/fresh", "--batch-size", "100000000"],
     "batch size 100000000, inference batch 1024: about"),
    ("other options for a run", lambda b: None, ["--strategies", "mqnet", "--purity", "knn"],
     "was made with strategy options"),
]


@pytest.mark.parametrize("name, tamper, extra, message", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_a_bad_file_or_option_is_a_named_error_that_changes_nothing(base, tmp_path, capsys, name, tamper, extra,
                                                                  message):
    import re

    b = _copy(base, tmp_path)
    tamper(b)
    before = snapshot(b)
    extra = [a.replace("{b}", str(b)) for a in extra]
    argv = BASE + ["--strategies", "random,mqnet", "--cache-dir", b / "cache", "--run-dir", b / "run"] + extra
    rc, err = cli(argv, capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    # a fresh run directory may hold the rounds it completed before the failure (the encoder cases:
    # the entry is read in round 0's query); every other file is as it was
    assert snapshot(b, leave_out=("fresh",)) == before
    if "cache" not in name:
        assert not (b / "fresh").exists()


def test_edited_options_in_config_json_change_nothing(base, tmp_path, capsys):
    """config.json is an output: which reruns are accepted is decided by the checkpoint's seal."""
    b = _copy(base, tmp_path)
    path = b / "run/mqnet/seed0/config.json"
    config = json.loads(path.read_text())
    config["strategy_options"]["purity"] = "knn"
    path.write_text(json.dumps(config))
    rc, err = cli(BASE + ["--strategies", "mqnet", "--purity", "knn", "--cache-dir", b / "cache",
                          "--run-dir", b / "run"], capsys)
    assert rc == 2 and "was made with strategy options" in err
    rc, err = cli(BASE + ["--strategies", "random,mqnet", "--cache-dir", b / "cache", "--run-dir", b / "run"], capsys)
    assert rc == 0, err


def test_runs_record_the_models_they_used(base):
    """config.json names the sha256 of the round-0 model and of the CSI encoder each run used, equal
    to the seals of the files they came from."""
    config = json.loads((base / "run/mqnet/seed0/config.json").read_text())["models"]
    round_zero = next((base / "run/round0/seed0").glob("*.pt"))
    assert config["round-0 target model"] == read_seal(round_zero, "file")["sha256"]
    encoders = {read_seal(p, "file")["sha256"] for p in _encoder_entries(base)}
    assert config["csi-encoder"] in encoders
    random_models = json.loads((base / "run/random/seed0/config.json").read_text())["models"]
    assert "csi-encoder" not in random_models  # random used no encoder
    assert random_models["round-0 target model"] == config["round-0 target model"]


def test_writes_that_fail_are_named_and_a_finished_run_resumes_without_writing(base, tmp_path, capsys, monkeypatch):
    import mqnet_fast.io as mio

    b = _copy(base, tmp_path)
    command = BASE + ["--strategies", "random,mqnet", "--cache-dir", b / "cache", "--run-dir", b / "run"]
    assert cli(command, capsys)[0] == 0  # config.json names the copy's cache folder
    before = snapshot(b)
    for code, message in ((errno.EACCES, "not writable by this process"), (errno.ENOSPC, "the disk is full")):
        def refuse(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(mio.tempfile, "mkstemp", refuse)
        # a finished run needs no write: it resumes in a folder it cannot write to
        rc, err = cli(command, capsys)
        assert rc == 0, err
        # a new strategy must write: named, nothing changed
        rc, err = cli(BASE + ["--strategies", "conf,mqnet", "--cache-dir", b / "cache", "--run-dir", b / "run"], capsys)
        assert rc == 2 and message in err and "Traceback" not in err, err
        assert snapshot(b) == before
        monkeypatch.undo()


def test_a_start_that_failed_for_any_reason_leaves_the_directory_usable(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise ConfigError("round 0 failed")

    monkeypatch.setattr(phases, "train", fail)
    rc, err = cli(BASE + ["--strategies", "mqnet", "--width", "8", "--run-dir", tmp_path / "run"], capsys)
    assert rc == 2 and "round 0 failed" in err and json.loads((tmp_path / "run/experiment.json").read_text())["width"] == 8
    monkeypatch.undo()
    rc, err = cli(BASE + ["--strategies", "mqnet", "--run-dir", tmp_path / "run"], capsys)  # the corrected command
    assert rc == 0, err
    assert json.loads((tmp_path / "run/experiment.json").read_text())["width"] == 16


# ---------------------------------------------------------------------------------------------------
# report

def test_report_reads_only_what_verifies_and_says_what_it_skipped(base, tmp_path, capsys):
    b = _copy(base, tmp_path)
    rc, err = cli(["report", b / "run", "--out", tmp_path / "r0"], capsys)
    assert rc == 0, err
    table = (tmp_path / "r0" / "report.md").read_text()
    # an edited metrics.json is not read: the table is unchanged
    path = b / "run/random/seed0/metrics.json"
    path.write_text(json.dumps([{**r, "test_accuracy": 0.999} for r in json.loads(path.read_text())]))
    rc, err = cli(["report", b / "run", "--out", tmp_path / "r1"], capsys)
    assert rc == 0 and (tmp_path / "r1" / "report.md").read_text() == table
    # a damaged checkpoint: that run is skipped, named with the reason; the other is reported
    _edit_payload(b / "run/mqnet/seed0/checkpoint.pt")
    rc, err = cli(["report", b / "run", "--out", tmp_path / "r2"], capsys)
    assert rc == 0 and "skipped" in err and "mqnet/seed0/checkpoint.pt" in err and "edited or damaged" in err
    report = (tmp_path / "r2" / "report.md").read_text()
    assert "| random |" in report and "| mqnet" not in report and "Runs left out" in report
    # nothing verifies: exit 2, saying why
    (b / "run/random/seed0/checkpoint.pt").write_bytes(b"")
    rc, err = cli(["report", b / "run", "--out", tmp_path / "r3"], capsys)
    assert rc == 2 and "no run in" in err and "cannot be read" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# one writer per run: two real processes

def _command(run_dir: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "mqnet_fast", *BASE, "--run-dir", str(run_dir), *extra]


def _wait_for_holder(lock: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `process` holds `lock` (its pid written there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first run ended before it was seen holding its lock"
        try:
            if json.loads(lock.read_text())["pid"] == process.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{lock} was not taken")


SLOW = ["--strategies", "mqnet", "--informativeness", "conf", "--rounds", "4", "--iterations", "300"]


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_frees_the_run(tmp_path):
    """The issue's case: knn running, react started on the same directory: react exits 2 naming
    knn's process, and after knn is killed with SIGKILL a rerun takes the run and finishes it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_command(run_dir, *SLOW, "--purity", "knn"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_holder(run_dir / ".locks" / "run-mqnet-seed0", first)
        second = subprocess.run(_command(run_dir, *SLOW, "--purity", "react"), env=env, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"run mqnet seed 0 in {str(run_dir)!r} is being written by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        same = subprocess.run(_command(run_dir, *SLOW, "--purity", "knn"), env=env, capture_output=True, text=True,
                              timeout=300)
        assert same.returncode == 2 and f"process {first.pid}" in same.stderr  # two identical commands: one works
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = subprocess.run(_command(run_dir, *SLOW, "--purity", "knn"), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    records = checkpoint_state(run_dir / "mqnet" / "seed0" / "checkpoint.pt")["records"]
    assert len(records) == 5
    react = subprocess.run(_command(run_dir, *SLOW, "--purity", "react"), env=env, capture_output=True, text=True,
                           timeout=300)
    assert react.returncode == 2 and "was made with strategy options" in react.stderr


def test_wait_waits_for_the_holder_then_resumes_what_it_left(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_command(run_dir, *SLOW, "--purity", "knn"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_holder(run_dir / ".locks" / "run-mqnet-seed0", first)
        second = subprocess.run(_command(run_dir, *SLOW, "--purity", "knn", "--wait"), env=env, capture_output=True,
                                text=True, timeout=600)
        assert first.wait(timeout=600) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 0, second.stderr
    assert f"waiting for run mqnet seed 0: it is being written by process {first.pid}" in second.stderr
    assert len(checkpoint_state(run_dir / "mqnet" / "seed0" / "checkpoint.pt")["records"]) == 5


def test_another_experiment_in_use_is_refused_naming_its_runs(tmp_path):
    """A directory whose experiment has saved nothing yet can be taken over, but not while a process
    runs that experiment in it (here this process, through locks taken as a running process takes them)."""
    from mqnet_fast.experiment.lock import FileLock
    from mqnet_fast.experiment.store import RunLocked

    digits = load_digits()
    first = Experiment(tiny_config(strategies=["random"], rounds=1), tmp_path / "run", data=digits)
    with first.store.session(first.identity, [("random", 0)]):
        part = FileLock(tmp_path / "run" / ".locks" / "experiment")
        with pytest.raises(Exception):
            part.acquire(wait=False)  # shared by the running experiment
        other = Experiment(tiny_config(strategies=["random"], rounds=1, noise=0.4), tmp_path / "run", data=digits)
        with pytest.raises(RunLocked, match="in use by a process running another experiment there \\(random-seed0: "
                                            f"process {os.getpid()}"):
            other.run()
    other.run()  # once the first has stopped (having saved nothing), the other takes the directory over
    assert json.loads((tmp_path / "run" / "experiment.json").read_text())["noise"] == 0.4


def test_workers_die_with_their_parent(tmp_path):
    """--jobs workers run under their parent's locks: killed with it (SIGKILL included)."""
    script = tmp_path / "parent.py"
    child_code = ("import os, sys, time\n"
                  "from mqnet_fast.experiment.runner import _die_with_parent\n"
                  "_die_with_parent(int(sys.argv[1]))\n"
                  "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
                  "time.sleep(600)\n")
    (tmp_path / "child.py").write_text(child_code)
    script.write_text("import os, subprocess, sys, time\n"
                      f"subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}, str(os.getpid()), "
                      f"{str(tmp_path / 'ready')!r}])\n"
                      "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() or not (tmp_path / "ready").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int((tmp_path / "ready").read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the worker outlived its parent")


def test_running_out_of_memory_is_a_named_error(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 256.00 GiB")

    monkeypatch.setattr(phases, "train", fail)
    rc, err = cli(BASE + ["--strategies", "mqnet", "--run-dir", tmp_path / "run"], capsys)
    assert rc == 2 and "out of memory" in err and "lower --batch-size" in err and "Traceback" not in err, err


def _workers(parent: int) -> list[int]:
    """The pids of the spawned worker processes of `parent` (not its resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_killed_worker_ends_the_run_by_name_and_a_rerun_resumes(tmp_path):
    """--jobs: a worker killed with SIGKILL (as the out-of-memory killer does) ends the run at once
    with exit 2 naming a run, instead of leaving it waiting for the lost run forever."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mqnet_fast", "run", "--quiet", "--budget", "10", "--strategies", "random,conf",
               "--seeds", "0,1", "--rounds", "3", "--iterations", "300", "--jobs", "2", "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(run_dir.glob("*/seed*/config.json")):  # the workers are running
            assert first.poll() is None and time.monotonic() < deadline, "the run ended before its workers started"
            time.sleep(0.05)
        os.kill(_workers(first.pid)[0], signal.SIGKILL)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2, err
    assert "a worker process died" in err and "rerun the same command to resume" in err and "Traceback" not in err
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("random", "conf"):
        for seed in (0, 1):
            assert len(checkpoint_state(run_dir / name / f"seed{seed}" / "checkpoint.pt")["records"]) == 4


def test_locks_are_released_on_every_exit_path(tmp_path, capsys):
    from mqnet_fast.experiment.lock import FileLock

    digits = load_digits()
    config = tiny_config(strategies=["random"], rounds=1)
    experiment = Experiment(config, tmp_path / "run", data=digits)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    original = phases.select
    phases.select = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            experiment.run()
    finally:
        phases.select = original
    lock = FileLock(tmp_path / "run" / ".locks" / "run-random-seed0")
    lock.acquire()  # free again in this very process
    lock.release()
    experiment.run_one("random", 0)  # and the API's single run takes and releases it too
    lock.acquire()
    lock.release()


# ---------------------------------------------------------------------------------------------------
# select: inputs and output paths

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _huge_header(path: Path) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 23, 1 << 23 | 1 << 22)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("feats.npy", header.getvalue() + b"\0" * 64)
    return path


def _good(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _npz(path, feats=rng.normal(size=(30, 4)).astype(np.float32),
                probs=np.full((30, 3), 1 / 3, np.float32), labeled=np.array([0, 1]))


def _link(t: Path) -> None:
    _good(t / "in.npz")
    (t / "target").write_text("keep")
    (t / "link").symlink_to(t / "target")


SELECT_CASES = [
    ("truncated npz", lambda t: (t / "in.npz").write_bytes(_good(t / "g.npz").read_bytes()[:200]), {},
     "is not a readable .npz file"),
    ("empty file", lambda t: (t / "in.npz").write_bytes(b""), {}, "is not a readable .npz file"),
    (".npy renamed", lambda t: np.save(t / "in.npy", np.ones(3)) or (t / "in.npy").rename(t / "in.npz"), {},
     "holds a single array"),
    ("0-d feats", lambda t: _npz(t / "in.npz", feats=np.float32(1)), {}, "'feats' must be 2-D"),
    ("1-D logits", lambda t: _npz(t / "in.npz", feats=np.ones((5, 2), np.float32), logits=np.ones(5, np.float32)),
     {}, "'logits' must be 2-D"),
    ("364 TiB header", lambda t: _huge_header(t / "in.npz"), {}, "needs about 384.0 TiB, more than"),
    ("empty --out", lambda t: _good(t / "in.npz"), {"out": ""}, "--out is empty"),
    ("--out under a file", lambda t: _good(t / "in.npz") and (t / "afile").write_text("x"),
     {"out": "{t}/afile/x.csv"}, "is a file, not a folder"),
    ("--out a directory", lambda t: _good(t / "in.npz") and (t / "adir").mkdir(), {"out": "{t}/adir"},
     "is a directory"),
    ("--out a FIFO", lambda t: _good(t / "in.npz") and os.mkfifo(t / "fifo"), {"out": "{t}/fifo"},
     "is a special file"),
    ("--out a symlink", lambda t: _link(t), {"out": "{t}/link"}, "is a symbolic link"),
    ("--out the input", lambda t: _good(t / "in.npz"), {"out": "{t}/in.npz"}, "is the input file"),
    ("--out a device", lambda t: _good(t / "in.npz"), {"out": "/dev/null"}, "is a special file"),
]


@pytest.mark.parametrize("name, prepare, change, message", SELECT_CASES, ids=[c[0] for c in SELECT_CASES])
def test_select_failures_are_named_and_change_nothing(tmp_path, capsys, name, prepare, change, message):
    import stat

    prepare(tmp_path)
    before = snapshot(tmp_path)
    null = os.stat("/dev/null")
    out = change.get("out", "{t}/picks.csv").replace("{t}", str(tmp_path))
    rc, err = cli(["select", "--embeddings", tmp_path / "in.npz", "--strategy", "conf", "--budget", "3",
                   "--out", out], capsys)
    assert rc == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_rdev == null.st_rdev


def test_select_writes_to_standard_output_with_a_dash(tmp_path, capsys):
    _good(tmp_path / "in.npz")
    assert main(["select", "--embeddings", str(tmp_path / "in.npz"), "--strategy", "conf", "--budget", "3",
                 "--out", "-"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "index,score" and len(out) == 4


def test_output_files_follow_the_umask_and_keep_a_replaced_files_mode(tmp_path, capsys):
    _good(tmp_path / "in.npz")
    argv = ["select", "--embeddings", tmp_path / "in.npz", "--strategy", "conf", "--budget", "3", "--out"]
    before = os.umask(0o027)
    try:
        assert cli(argv + [tmp_path / "new.csv"], capsys)[0] == 0
        (tmp_path / "kept.csv").write_text("old")
        os.chmod(tmp_path / "kept.csv", 0o600)
        assert cli(argv + [tmp_path / "kept.csv"], capsys)[0] == 0
    finally:
        os.umask(before)
    assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "kept.csv").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "kept.csv").read_text().startswith("index,score")


# ---------------------------------------------------------------------------------------------------
# data and memory guards

@pytest.mark.parametrize("label", [10**8, 2**63 + 5])
def test_huge_labels_are_refused_before_anything_is_built(tmp_path, capsys, label):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    dtype = np.uint64 if label > 2**62 else np.int64
    test_labels = labels.astype(dtype)
    test_labels[0] = label
    _npz(tmp_path / "e.npz", train_feats=rng.normal(size=(40, 3)).astype(np.float32), train_labels=labels,
         test_feats=rng.normal(size=(40, 3)).astype(np.float32), test_labels=test_labels)
    rc, err = cli(["run", "--quiet", "--dataset", f"embeddings:{tmp_path / 'e.npz'}", "--run-dir", tmp_path / "run"],
                  capsys)
    assert rc == 2 and f"labels go up to {label}" in err, err
    assert not (tmp_path / "run").exists()


def test_a_test_split_without_in_examples_is_refused_at_start(tmp_path):
    import dataclasses

    digits = load_digits()
    config = tiny_config(strategies=["random"], rounds=1)
    split = make_open_set(digits.train_labels, 10, 4, config.noise, config.budget, 0)
    ood = next(c for c in range(10) if c not in split.in_classes)
    data = dataclasses.replace(digits, test_labels=np.full_like(digits.test_labels, ood))
    with pytest.raises(ConfigError, match="the test split holds no example of the IN classes"):
        Experiment(config, tmp_path / "run", data=data)
    assert not (tmp_path / "run").exists()


def test_memory_estimates_refuse_before_allocating(monkeypatch):
    from mqnet_fast import _memory, ops
    from mqnet_fast.strategies.similar import Factors, logdetcmi_greedy

    monkeypatch.setenv(_memory.ENV, "1G")
    wide = torch.ones(1, 1).expand(60000, 60000)  # no memory until copied
    with pytest.raises(_memory.MemoryLimitError, match="x as contiguous float32 needs about 13.4 GiB, more than the "
                                                       "limit MQNET_FAST_MEMORY_LIMIT=1G"):
        ops.kcenter_greedy(wide, [0], 2)
    labeled = Factors([torch.randn(12000, 4)])
    with pytest.raises(_memory.MemoryLimitError, match="similar's LogDetCMI over 24000 labeled"):
        logdetcmi_greedy(Factors([torch.randn(100, 4)]), labeled, labeled, 5, 1.0, 1.0, 1.0)
    monkeypatch.setenv(_memory.ENV, "lots")
    with pytest.raises(_memory.MemoryLimitError, match="MQNET_FAST_MEMORY_LIMIT='lots' is not a size"):
        ops.kcenter_greedy(wide[:10, :10], [0], 2)
