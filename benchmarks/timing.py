"""The one timing helper of the benchmark scripts (benchmarks/ops, engine, gpu): best-of wall time
on the host, CUDA-event time and CUDA-graph replay time on a GPU, and the GPUs' peak figures the
"fraction of peak" columns divide by. A script in a subfolder puts this folder on sys.path:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from timing import best_of
"""
from __future__ import annotations

import time

# Peak figures for the "fraction of peak" columns (dense, no sparsity), by device-name substring.
GPU_PEAKS = {"H100": {"hbm_gbs": 3350.0, "bf16_tflops": 989.0}, "H200": {"hbm_gbs": 4800.0, "bf16_tflops": 989.0}}


def best_of(fn, repeats: int = 3, per: float = 1.0) -> float:
    """The least wall time in seconds of fn() over `repeats` calls, divided by `per` (the calls or
    steps one fn() makes). Host time: on a GPU, fn must synchronize itself (or use cuda_time)."""
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tick)
    return best / per


def seconds(fn) -> float:
    """The wall time in seconds of one call of fn()."""
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def cuda_time(fn, repeat: int = 3) -> float:
    """Best wall time in seconds of fn() over `repeat` runs, measured with CUDA events."""
    import torch

    best = float("inf")
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000.0)
    return best


def graph_time(fn, calls: int = 20, repeat: int = 3) -> float:
    """Device seconds per call of fn, captured `calls` times in one CUDA graph and replayed (no host
    launch overhead, unlike cuda_time)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm up (compilation, allocator) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return cuda_time(graph.replay, repeat=repeat) / calls
