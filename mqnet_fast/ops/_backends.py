"""The backend tables of the ops and the one resolver that reads them.

Each op module declares a `Backends` table: which backends it has, which of them compute in float32
(refusing float64 input), what shapes a backend takes, and the order in which "auto" tries them on
each device type. `resolve` turns the backend asked for into the one that runs, or refuses it with
a message naming the op, the backend and the reason. Adding a backend to an op touches its table and
its dispatch, nothing here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import _triton
from mqnet_fast._library import compiled_backends, has_compiled, has_op, require_compiled

BACKENDS = ("auto", "torch", "cpp", "cuda", "triton")
# "auto" on CUDA tensors takes the Triton kernel for every op: it was faster than the CUDA kernel for
# all four at issue 4's sizes on an H100 (benchmarks/results/gpu/h100/run2-gpu-bench.md: k-center 0.37 vs
# 1.06 s, nearest 27 vs 416 ms, BADGE 0.24 vs 0.71 s, MLP op 0.19 vs 0.59 ms) and, with the previous
# Triton kernels, on an H200 (benchmarks/results/gpu/gpu-bench.md). Smaller sizes were not measured.
AUTO = {"cpu": ("cpp", "torch"), "cuda": ("triton", "torch")}  # any other device: "torch"


@dataclass(frozen=True)
class Backends:
    """An op's backends: `kernels` those it has; `missing` the message for each one it lacks (asked
    for by name); `float32` those that compute in float32 (half-precision storage allowed) and refuse
    float64 input; `shapes` per backend a check of the call's shapes (keywords given to `resolve`)
    returning why it refuses them, or None; `auto` the order "auto" tries per device type."""
    op: str
    kernels: tuple = ("torch", "cpp", "triton", "cuda")
    float32: tuple = ()
    missing: dict = field(default_factory=dict)
    shapes: dict[str, Callable[..., str | None]] = field(default_factory=dict)
    auto: dict = field(default_factory=lambda: dict(AUTO))


def refusal(table: Backends, backend: str, device: torch.device, dtype: torch.dtype | None, **shape) -> str | None:
    """Why `backend` cannot run the call here (None: it can). "cpp" without _C is refused by
    require_compiled's own error where it is asked for by name (`resolve`)."""
    op = table.op
    if backend == "cpp":
        if not has_compiled():
            return f"{op}: mqnet_fast._C is not built"
        if device.type != "cpu":
            return f"{op}: backend 'cpp' runs on CPU tensors, got tensors on {device}"
        if not has_op(op):
            return (f"{op}: mqnet_fast._C was built before this op existed; rebuild it "
                    "(pip install --no-build-isolation --no-deps -e .)")
    if backend == "triton":
        reason = _triton.unavailable_reason(device)
        if reason is not None:
            return f"{op}: backend 'triton' cannot run here: {reason}"
    if backend == "cuda":
        if "cuda" not in compiled_backends():
            return (f"{op}: backend 'cuda' needs mqnet_fast._C built with CUDA (found backends "
                    f"{compiled_backends()}); rebuild where a CUDA toolkit is found, on a machine with a visible GPU or with "
                    "MQNET_FAST_WITH_CUDA=1 (pip install --no-build-isolation --no-deps -e .)")
        if device.type != "cuda":
            return f"{op}: backend 'cuda' runs on CUDA tensors, got tensors on {device}"
    if backend in table.float32 and dtype == torch.float64:
        return (f"{op}: backend {backend!r} computes in float32 (half-precision storage allowed), "
                "got float64 input; use backend='torch' for float64")
    check = table.shapes.get(backend)
    return check(**shape) if check is not None and shape else None


def check_name(table: Backends, backend: str) -> None:
    """Refuse a backend name that is not one (or that the op has no kernel of), before anything else."""
    if backend not in BACKENDS:
        raise ValueError(f"{table.op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto" and backend not in table.kernels:
        raise ValueError(table.missing.get(backend, f"{table.op}: there is no {backend!r} kernel"))


def resolve(table: Backends, backend: str, device: torch.device, dtype: torch.dtype | None = None, **shape) -> str:
    """The backend that runs the call: `backend` itself where it can (else ValueError saying why),
    or for "auto" the first of the table's order for the device type that the op has and that can."""
    check_name(table, backend)
    if backend == "auto":
        for candidate in table.auto.get(device.type, ("torch",)):
            if candidate in table.kernels and refusal(table, candidate, device, dtype, **shape) is None:
                return candidate
        return "torch"
    if backend == "cpp":
        require_compiled(table.op)
    reason = refusal(table, backend, device, dtype, **shape)
    if reason is not None:
        raise ValueError(reason)
    return backend


def storage_dtype(t: torch.Tensor) -> torch.dtype:
    """What the Triton and CUDA kernels read: half precision as given, everything else in the compute dtype."""
    return t.dtype if t.dtype in (torch.bfloat16, torch.float16) else checks.compute_dtype(t)
