"""The experiment engine across processes: data-parallel training against micro-batches in one process,
and `torchrun -m mqnet_fast run` against the single-process run (gloo on the CPU, 2 and 3 processes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mqnet_fast.data import load_dataset
from mqnet_fast.training import DeviceImages, TrainConfig, make_model, train_model

REPO = Path(__file__).resolve().parents[1]


def _train_inputs(loss_module: bool):
    data = load_dataset("digits")
    mean, std = DeviceImages.channel_stats(data.train_images)
    images = DeviceImages(data.train_images, mean, std, torch.device("cpu"), data.flip)
    index = torch.arange(0, 300, 3)
    labels = torch.from_numpy(data.train_labels[index.numpy()]).long()
    model = make_model(10, images.images.shape[1], torch.device("cpu"), 7, loss_module=loss_module, width=8)
    return model, images, index, labels


def _config(parts: int, batch_size: int = 24) -> TrainConfig:
    return TrainConfig(iterations=12, batch_size=batch_size, lr=0.05, micro_batches=parts,
                       loss_module_detach_fraction=0.5)


def _train_worker(rank, world_size, init_file, out_file, loss_module, batch_size):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    from mqnet_fast.world import World

    model, images, index, labels = _train_inputs(loss_module)
    loss = train_model(model, images, index, labels, _config(world_size, batch_size), seed=3, show_progress=False,
                       world=World())
    if rank == world_size - 1:  # the last rank: its buffers came from rank 0 at the end
        torch.save({"state": model.state_dict(), "loss": loss}, out_file)
    dist.barrier()  # every rank done with gloo before any tears its group down (else a rank can abort at exit)
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size, loss_module, batch_size", [(2, False, 24), (3, True, 24)])
def test_ddp_training_equals_micro_batches_in_one_process(tmp_path, world_size, loss_module, batch_size):
    out = tmp_path / "ddp.pt"
    mp.spawn(_train_worker, args=(world_size, str(tmp_path / "init"), str(out), loss_module, batch_size),
             nprocs=world_size, join=True)
    got = torch.load(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, images, index, labels = _train_inputs(loss_module)
        loss = train_model(model, images, index, labels, _config(world_size, batch_size), seed=3, show_progress=False)
        whole = make_model(10, images.images.shape[1], torch.device("cpu"), 7, loss_module=loss_module, width=8)
        train_model(whole, images, index, labels, _config(1, batch_size), seed=3, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert got["loss"] == loss
    expected = model.state_dict()
    assert expected.keys() == got["state"].keys()
    for name, value in expected.items():
        assert torch.equal(value, got["state"][name]), name  # bit for bit, buffers included
    # the parts are not the whole batch: BatchNorm statistics per part, another summation
    assert any(not torch.equal(value, whole.state_dict()[name]) for name, value in expected.items())


def _encoder_inputs(parts: int):
    import dataclasses

    import numpy as np

    from mqnet_fast.training.contrastive import DIGITS_ENCODER

    data = load_dataset("digits")
    mean, std = DeviceImages.channel_stats(data.train_images)
    images = DeviceImages(data.train_images, mean, std, torch.device("cpu"), data.flip)
    config = dataclasses.replace(DIGITS_ENCODER, epochs=2, width=4, micro_batches=parts)
    return images, np.arange(0, 400, 4), config  # 100 images: 4 steps an epoch, the last one short


def _encoder_worker(rank, world_size, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    from mqnet_fast.world import World
    from mqnet_fast.training.contrastive import train_encoder

    images, pool, config = _encoder_inputs(world_size)
    encoder = train_encoder(images, pool, config, seed=2, show_progress=False, world=World())
    if rank == world_size - 1:
        torch.save(encoder.state_dict(), out_file)
    dist.barrier()  # every rank done with gloo before any tears its group down (else a rank can abort at exit)
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_encoder_equals_micro_batches_in_one_process(tmp_path, world_size):
    from mqnet_fast.training.contrastive import train_encoder

    out = tmp_path / "encoder.pt"
    mp.spawn(_encoder_worker, args=(world_size, str(tmp_path / "init"), str(out)), nprocs=world_size, join=True)
    got = torch.load(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, pool, config = _encoder_inputs(world_size)
        expected = train_encoder(images, pool, config, seed=2, show_progress=False).state_dict()
        whole = train_encoder(images, pool, _encoder_inputs(1)[2], seed=2, show_progress=False).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    assert any(not torch.equal(value, whole[name]) for name, value in expected.items())


def test_micro_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"micro_batches \(5\) must divide batch_size \(64\)"):
        TrainConfig(micro_batches=5)
    with pytest.raises(ValueError, match="micro_batches must be an integer >= 1"):
        TrainConfig(micro_batches=0)


# --------------------------------------------------------------------------------------------------
# torchrun -m mqnet_fast run against one process

STRATEGIES = "random,conf,coreset,badge,ll,mqnet"


def _run(tmp_path, name, processes, *extra, ok=True, strategies=STRATEGIES):
    run_dir = tmp_path / name
    common = ["--dataset", "digits", "--strategies", strategies, "--rounds", "2", "--budget", "15",
              "--iterations", "6", "--batch-size", "24", "--width", "8",
              "--meta-epochs", "2", "--meta-min-steps", "5", "--encoder-epochs", "1", "--quiet",
              "--run-dir", str(run_dir), "--device", "cpu", *extra]
    # a cache of its own: the encoder is trained in this run, not read from the other's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MQNET_FAST_CACHE": str(tmp_path / f"cache-{name}")}
    if "--infer-batch" not in extra:
        common += ["--infer-batch", "64"]
    if processes == 1:
        cmd = [sys.executable, "-m", "mqnet_fast", "run", *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "mqnet_fast", "run", *common]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) == ok, done.stderr[-4000:]
    return run_dir, done


def _outputs(run_dir: Path) -> dict:
    out = {}
    for path in sorted(run_dir.glob("*/seed*/metrics.json")):
        records = json.loads(path.read_text())
        out[str(path.parent.relative_to(run_dir))] = {
            "records": [{k: v for k, v in r.items() if not k.startswith("time_")} for r in records],
            "queries": json.loads((path.parent / "queries.json").read_text())}
    return out


@pytest.mark.parametrize("processes, purity, strategies, infer", [
    (2, "csi", STRATEGIES, "64"),
    (3, "knn", "random,coreset,badge,mqnet", "1024")])  # 2 blocks of 1,024 for 3 ranks: rank 0 has no candidate
def test_torchrun_run_equals_the_single_process_run(tmp_path, processes, purity, strategies, infer):
    """csi: the CSI encoder trained under DDP too (and the purity on the sharded view); knn: every
    purity computed on every rank (--purity-diagnostics), one rank without candidates."""
    options = ["--batch-size", "24", "--purity", purity, "--infer-batch", infer]
    if purity == "knn":
        options.append("--purity-diagnostics")
    single, _ = _run(tmp_path, "one", 1, "--micro-batches", str(processes), *options, strategies=strategies)
    multi, done = _run(tmp_path, "many", processes, *options, strategies=strategies)
    assert f"({processes} processes)" in done.stderr
    expected, got = _outputs(single), _outputs(multi)
    assert len(expected) == len(strategies.split(","))
    assert got.keys() == expected.keys()
    for run in expected:
        assert got[run]["queries"] == expected[run]["queries"], run
        assert len(got[run]["records"]) == len(expected[run]["records"]), run
        for mine, theirs in zip(got[run]["records"], expected[run]["records"]):
            assert mine.keys() == theirs.keys(), run
            for key, value in theirs.items():
                if key == "coreset_final_radius":  # distributed k-center computes distances as the reference
                    assert mine[key] == pytest.approx(value, rel=1e-6), (run, key)
                else:
                    assert mine[key] == value or (value != value and mine[key] != mine[key]), (run, key)
    identity = json.loads((multi / "experiment.json").read_text())
    assert identity["micro_batches"] == processes
    assert identity == json.loads((single / "experiment.json").read_text())


def test_torchrun_resumes_from_rank_0s_files_and_refuses_a_wrong_micro_batch_count(tmp_path):
    run_dir, _ = _run(tmp_path, "many", 2, "--purity", "knn", strategies="random,mqnet")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".csv")}
    _run(tmp_path, "many", 2, "--purity", "knn", strategies="random,mqnet")  # every run is complete: each rank reads rank 0's checkpoints, trains nothing
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".csv")}
    assert after == before
    _, done = _run(tmp_path, "many", 2, "--purity", "knn", "--micro-batches", "3", ok=False, strategies="random,mqnet")
    assert "micro_batches is 3 but the run has 2 processes" in done.stderr
