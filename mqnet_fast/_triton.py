"""The one place that imports the Triton kernels (mqnet_fast.ops.*_triton), lazily: importing
triton costs about a second and is only needed for backend="triton"."""
from __future__ import annotations

import importlib
import os

import torch

_MODULES = {}


def interpreted() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def unavailable_reason(device: torch.device) -> str | None:
    """None if the Triton kernels can run on `device`, else why not."""
    try:
        importlib.import_module("triton")
    except ImportError as err:
        return f"triton is not installed ({err})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreted():
        return None
    return (f"Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1); "
            f"got tensors on {device}")


def kernel_module(op: str):
    """mqnet_fast.ops.<op>_triton, imported once."""
    if op not in _MODULES:
        _MODULES[op] = importlib.import_module(f"mqnet_fast.ops.{op}_triton")
    return _MODULES[op]
