"""Time per target-model training iteration (ResNet-18, CIFAR-shaped 3x32x32 images held on the device,
random crop + flip, batch 64, SGD momentum), as the engine trains (mqnet_fast.training.train_model:
channels_last and bf16 autocast on a GPU), and its breakdown: batch gather and augmentation, forward
+ loss, backward, optimizer step, each timed alone with the device synchronized around it.

Variants (each measured in this run, so compare them as ratios):
    engine     train_model as the experiment calls it
    compiled   the same loop with torch.compile(model)
    fused      the same loop with SGD(fused=True) (CUDA only)
With --jobs N it also starts N copies of the engine variant at once and reports their summed
throughput against one (several (strategy, seed) runs sharing one GPU).

    python benchmarks/gpu/train_step_bench.py --device cuda --out DIR        # on a GPU
    python benchmarks/gpu/train_step_bench.py --smoke                        # CPU, tiny, seconds
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.training import DeviceImages, TrainConfig, make_model, train_model
from mqnet_fast.training.optim import set_lr
from mqnet_fast.training.loop import device_autocast


def _images(n: int, device: torch.device) -> DeviceImages:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    mean, std = DeviceImages.channel_stats(pixels)
    return DeviceImages(pixels, mean, std, device, flip=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_engine(images, labels, iterations: int, width: int, device, *, compiled: bool = False) -> float:
    """Seconds per iteration of train_model (after a warm-up of 10% of the iterations, at least 3)."""
    model = make_model(10, 3, device, 0, width=width)
    if compiled:
        model = torch.compile(model)
    index = torch.arange(len(labels))
    warm = max(3, iterations // 10)
    train_model(model, images, index, labels, TrainConfig(iterations=warm), 0, show_progress=False)
    _sync(device)
    tick = time.perf_counter()
    train_model(model, images, index, labels, TrainConfig(iterations=iterations), 1, show_progress=False)
    _sync(device)
    return (time.perf_counter() - tick) / iterations


def breakdown(images, labels, iterations: int, width: int, device, *, fused: bool = False) -> dict:
    """Mean seconds per iteration of each part of the engine's step, each synchronized alone (so
    the parts add up to more than the pipelined step)."""
    model = make_model(10, 3, device, 0, width=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                **({"fused": True} if fused else {}))
    generator = torch.Generator().manual_seed(0)
    labels = labels.to(device)
    parts = {"augment": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}
    model.train()
    for it in range(iterations + 3):
        rows = torch.randint(0, len(labels), (64,), generator=generator)
        times = []
        _sync(device)
        times.append(time.perf_counter())
        batch = images.augmented_batch(rows, generator)
        _sync(device)
        times.append(time.perf_counter())
        set_lr(optimizer, 0.1)
        with device_autocast(device):
            loss = F.cross_entropy(model(batch), labels[rows.to(device)])
        _sync(device)
        times.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        times.append(time.perf_counter())
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter())
        if it >= 3:  # warm-up
            for name, a, b in zip(parts, times, times[1:]):
                parts[name] += (b - a) / iterations
    return parts


def concurrent(jobs: int, iterations: int, width: int, device: str) -> float:
    """Summed iterations per second of `jobs` engine copies started at once (separate processes)."""
    cmd = [sys.executable, __file__, "--device", device, "--iterations", str(iterations), "--width", str(width),
           "--only-engine"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        rates.append(1.0 / json.loads(out.strip().splitlines()[-1])["engine_s_per_iter"])
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--pool", type=int, default=50000, help="images held on the device")
    parser.add_argument("--jobs", type=int, default=4, help="concurrent copies for the sharing measurement (0: skip)")
    parser.add_argument("--variants", default="engine,compiled,fused")
    parser.add_argument("--smoke", action="store_true", help="CPU, width 4, 3 iterations, 2 jobs: checks it runs")
    parser.add_argument("--only-engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="directory for train-step.json / .md")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.iterations, args.width, args.pool, args.jobs = "cpu", 3, 4, 256, 2
        args.variants = "engine"
    device = torch.device(args.device)
    images = _images(args.pool, device)
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 10, size=args.pool)).long()
    if args.only_engine:
        print(json.dumps({"engine_s_per_iter": time_engine(images, labels, args.iterations, args.width, device)}))
        return
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "width": args.width, "batch": 64, "iterations": args.iterations}
    variants = args.variants.split(",")

    def save() -> None:  # after every measurement: a run cut off at its time limit keeps what it measured
        if "engine_ms" in result:
            # the paper's protocol per (strategy, seed): 10 query rounds x 20,000 iterations (the engine's
            # round 0 is an 11th training, shared by the strategies of a seed); the goal is <= 15 minutes
            result["paper_protocol_minutes_per_strategy_seed"] = result["engine_ms"] * 10 * 20000 / 6e4
        text = json.dumps(result, indent=1)
        print(text, flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "train-step.json").write_text(text + "\n")

    def attempt(name, measure) -> None:  # a failing variant is a finding, not the end of the run
        try:
            measure()
        except Exception as err:
            result[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        save()

    def engine():
        result["engine_ms"] = 1e3 * time_engine(images, labels, args.iterations, args.width, device)
        result["breakdown_ms"] = {k: 1e3 * v for k, v in breakdown(images, labels, args.iterations, args.width,
                                                                      device).items()}

    def fused():
        result["fused_breakdown_ms"] = {k: 1e3 * v for k, v in breakdown(images, labels, args.iterations, args.width,
                                                                            device, fused=True).items()}

    def jobs():
        single = concurrent(1, args.iterations, args.width, args.device)
        many = concurrent(args.jobs, args.iterations, args.width, args.device)
        result["jobs"] = {"n": args.jobs, "one_iter_per_s": single, "n_iter_per_s": many,
                          "throughput_ratio": many / single}

    def compiled():
        result["compiled_ms"] = 1e3 * time_engine(images, labels, args.iterations, args.width, device, compiled=True)

    if "engine" in variants:
        attempt("engine", engine)
    if "fused" in variants and device.type == "cuda":
        attempt("fused", fused)
    if args.jobs > 0:
        attempt("jobs", jobs)
    if "compiled" in variants:  # last: compiling may take most of the time limit
        attempt("compiled", compiled)


if __name__ == "__main__":
    main()
