"""Time and bytes per pick of the distributed ops (mqnet_fast.distributed) for 1, 2 and 3 gloo
processes on this machine, beside the single-process ops in the same run.

    python benchmarks/ops/distributed_bench.py [--n 60000] [--d 128] [--picks 200] [--out FILE.md]

Every process is pinned to one thread; on a 2-core machine 3 processes share the cores, so the
3-process times measure communication and oversubscription, not a speed-up. Bytes are what
mqnet_fast.distributed counts on rank 0 (sent + received) per pick, the init's left out (a run of
1 pick subtracted from a run of picks + 1, for time and bytes alike).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _pool(n, d, c):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    probs = torch.softmax(torch.randn(n, c, generator=g) * 2, 1)
    return x, probs


def _worker(rank, world, n, d, c, picks, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from mqnet_fast import distributed

    x, probs = _pool(n, d, c)
    bounds = [n * r // world for r in range(world + 1)]
    rows = slice(bounds[rank], bounds[rank + 1])
    labeled = torch.arange(0, n, n // 100)[:100]
    out = {}
    for name, run in (
            ("kcenter", lambda b: distributed.kcenter_greedy(x[rows], labeled, b)),
            ("badge", lambda b: distributed.badge_kmeanspp(probs[rows], x[rows], b,
                                                           generator=torch.Generator().manual_seed(1)))):
        distributed.bytes_communicated(reset=True)
        dist.barrier()
        tick = time.perf_counter()
        run(1)  # the init (labeled distances / gradient factors) and one pick
        one = time.perf_counter() - tick
        counted = distributed.bytes_communicated(reset=True)
        one_bytes = counted["sent"] + counted["received"]
        dist.barrier()
        tick = time.perf_counter()
        run(picks + 1)
        total = time.perf_counter() - tick
        counted = distributed.bytes_communicated()
        out[name] = {"per_pick_s": (total - one) / picks,
                     "bytes_per_pick": (counted["sent"] + counted["received"] - one_bytes) / picks}
    if rank == 0:
        torch.save(out, out_file)
    dist.destroy_process_group()


def _single_process(n, d, c, picks):
    from mqnet_fast import ops

    torch.set_num_threads(1)
    x, probs = _pool(n, d, c)
    labeled = torch.arange(0, n, n // 100)[:100]
    out = {}
    for backend in ("torch", "auto"):
        for name, run in (("kcenter", lambda b: ops.kcenter_greedy(x, labeled, b, backend=backend)),
                          ("badge", lambda b: ops.badge_kmeanspp(probs, x, b, generator=torch.Generator().manual_seed(1),
                                                                 backend=backend))):
            tick = time.perf_counter()
            run(1)
            one = time.perf_counter() - tick
            tick = time.perf_counter()
            run(picks + 1)
            out[(name, backend)] = (time.perf_counter() - tick - one) / picks
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--c", type=int, default=10)
    parser.add_argument("--picks", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    single = _single_process(args.n, args.d, args.c, args.picks)
    lines = [f"# Distributed ops per pick ({platform.node()}, {os.cpu_count()} cores, gloo, 1 thread per process)",
             "", f"`python benchmarks/ops/distributed_bench.py --n {args.n} --d {args.d} --picks {args.picks}`: "
             f"N = {args.n}, d = {args.d}, C = {args.c}, 100 labeled rows, {args.picks} picks timed after the init.",
             "", "| op | processes | ms per pick | bytes per pick (rank 0, sent + received) |", "|---|---|---|---|"]
    for name in ("kcenter", "badge"):
        lines.append(f"| {name} | 1, single-process reference (`backend='torch'`) | "
                     f"{1000 * single[(name, 'torch')]:.2f} | 0 |")
        lines.append(f"| {name} | 1, single-process op (`auto`: C++) | {1000 * single[(name, 'auto')]:.2f} | 0 |")
    for world in (1, 2, 3):
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(_worker, args=(world, args.n, args.d, args.c, args.picks, f"{folder}/init", f"{folder}/out.pt"),
                     nprocs=world, join=True)
            result = torch.load(f"{folder}/out.pt")
        for name in ("kcenter", "badge"):
            lines.append(f"| {name} | {world}, mqnet_fast.distributed | {1000 * result[name]['per_pick_s']:.2f} | "
                         f"{result[name]['bytes_per_pick']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
