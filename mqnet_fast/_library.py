"""Loads the compiled library `mqnet_fast._C` (the one place that does) and reports how it was built."""
from __future__ import annotations

import json
import os

import torch

_BUILD_INFO_PATH = os.path.join(os.path.dirname(__file__), "_build_info.json")


def build_info() -> dict | None:
    """What the extension was built against (torch, CUDA, backends), or None if it was never built."""
    try:
        with open(_BUILD_INFO_PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load():
    try:
        from mqnet_fast import _C  # noqa: F401  (registers torch.ops.mqnet_fast.*)
    except ImportError as exc:
        info = build_info()
        built = ("it was never built" if info is None else
                 f"it was built for torch {info['torch_full']} (CUDA {info['cuda']}, backends {info['backends']})")
        return None, (
            f"mqnet_fast._C failed to load ({exc}); {built}, and this is torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}). Rebuild it from the project root with "
            "`pip install --no-build-isolation --no-deps -e .` (MQNET_FAST_FORCE_CPU=1 for a CPU-only build). "
            "backend='torch' works without it.")
    return _C, None


_C, LOAD_ERROR = _load()


def has_compiled() -> bool:
    return _C is not None


def compiled_backends() -> list[str]:
    """Backends compiled into _C ("cpu", and "cuda" when built with a CUDA toolkit)."""
    if _C is None:
        return []
    info = build_info() or {"backends": ["cpu"]}
    return list(info["backends"])


def require_compiled(op: str) -> None:
    if _C is None:
        raise RuntimeError(f"{op}: backend 'cpp' needs the compiled library. {LOAD_ERROR}")
