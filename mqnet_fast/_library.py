"""Loads the compiled library `mqnet_fast._C` (the one place that does) and reports how it was built."""
from __future__ import annotations

import json
import os
import warnings

import torch

_BUILD_INFO_PATH = os.path.join(os.path.dirname(__file__), "_build_info.json")


def build_info() -> dict | None:
    """What the extension was built against (torch, CUDA, backends), or None if it was never built."""
    try:
        with open(_BUILD_INFO_PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


REBUILD = ("Rebuild it from the project root with `pip install --no-build-isolation --no-deps -e .` "
           "(MQNET_FAST_WITH_CUDA=0 for a CPU-only build).")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """This CPU's feature flags as Linux lists them (avx2, avx512f, ...); None where unknown."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _load():
    info = build_info()
    flags = cpu_flags()
    missing = sorted(set((info or {}).get("cpu_features") or []) - flags) if flags is not None else []
    if missing:  # loading would end the process with an illegal instruction at the first kernel call
        return None, (
            f"mqnet_fast._C was built for CPUs with {', '.join(missing)} (MQNET_FAST_CPU_ARCH="
            f"{info.get('cpu_arch')}), which this CPU lacks. {REBUILD} backend='torch' works without it.")
    try:
        from mqnet_fast import _C  # noqa: F401  (registers torch.ops.mqnet_fast.*)
    except ImportError as exc:
        built = ("it was never built" if info is None else
                 f"it was built for torch {info['torch_full']} (CUDA {info['cuda']}, backends {info['backends']})")
        return None, (
            f"mqnet_fast._C failed to load ({exc}); {built}, and this is torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}). {REBUILD} backend='torch' works without it.")
    if info is not None and info.get("torch_full") != torch.__version__:
        warnings.warn(f"mqnet_fast._C was built against torch {info.get('torch_full')} and this is torch "
                      f"{torch.__version__}: its kernels may misbehave or crash. {REBUILD}", RuntimeWarning, stacklevel=3)
    return _C, None


_C, LOAD_ERROR = _load()


def has_compiled() -> bool:
    return _C is not None


def has_op(op: str) -> bool:
    """Whether the built _C registers `op` (a build older than the op's source does not)."""
    if _C is None:
        return False
    try:
        getattr(torch.ops.mqnet_fast, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def compiled_backends() -> list[str]:
    """Backends compiled into _C ("cpu", and "cuda" when built with a CUDA toolkit)."""
    if _C is None:
        return []
    info = build_info() or {"backends": ["cpu"]}
    return list(info["backends"])


def require_compiled(op: str) -> None:
    if _C is None:
        raise RuntimeError(f"{op}: backend 'cpp' needs the compiled library. {LOAD_ERROR}")
