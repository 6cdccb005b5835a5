"""Shared test helpers: devices, dtypes, per-dtype tolerances, and comparisons that say where they fail."""
from __future__ import annotations

import os

import pytest
import torch

from mqnet_fast._library import has_compiled

CPU_BACKENDS = ["torch", "cpp"] if has_compiled() else ["torch"]
FLOAT_DTYPES = [torch.float32, torch.float64]
# (rtol, atol) for values computed in a different summation order than the reference.
TOLERANCES = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-12, 1e-13)}
# Relative gap under which two candidates count as tied in float32 (rounding of a d-term sum).
NEAR_TIE = {torch.float32: 1e-4, torch.float64: 1e-10}

needs_cpp = pytest.mark.skipif(not has_compiled(), reason="mqnet_fast._C is not built")
cuda = pytest.mark.cuda


def triton_device() -> str | None:
    """Where the Triton kernels run in this session: "cuda", "cpu" (interpreter) or None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, *, rtol=None, atol=None, what="") -> None:
    """allclose with per-dtype tolerances; on failure names the worst entries."""
    dtype = dtype or expected.dtype
    rt, at = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    rtol = rt if rtol is None else rtol
    atol = at if atol is None else atol
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    both_inf = torch.isinf(actual) & torch.isinf(expected) & (actual.sign() == expected.sign())
    err = torch.where(both_inf, torch.zeros_like(actual), (actual - expected).abs())
    bound = atol + rtol * expected.abs().nan_to_num(posinf=0.0)
    bad = torch.nonzero(err > bound).flatten()
    if bad.numel():
        worst = bad[err.flatten()[bad].argsort(descending=True)[:5]]
        lines = [f"  [{int(i)}] got {actual.flatten()[i].item():.9g}, expected {expected.flatten()[i].item():.9g}"
                 for i in worst]
        raise AssertionError(f"{what}: {bad.numel()} of {expected.numel()} entries differ beyond "
                             f"rtol={rtol}, atol={atol}; worst:\n" + "\n".join(lines))


def assert_equal_indices(actual: torch.Tensor, expected: torch.Tensor, what="") -> None:
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = torch.nonzero(actual != expected).flatten()
    if diff.numel():
        i = int(diff[0])
        raise AssertionError(f"{what}: {diff.numel()} positions differ, first at {i}: got "
                             f"{actual[max(0, i - 2): i + 3].tolist()}, expected {expected[max(0, i - 2): i + 3].tolist()}")


def tiny_config(**kw):
    """An ExperimentConfig for tests: tiny rounds, budget, iterations and encoder; MQ-Net's Phi
    trained briefly. Keywords override."""
    from mqnet_fast.experiment import ExperimentConfig
    from mqnet_fast.strategies import STRATEGIES

    base = dict(strategies=list(STRATEGIES), rounds=2, budget=12, iterations=3, encoder_epochs=1, progress=False)
    base.update(kw)
    if "mqnet" in base["strategies"]:
        base["options"] = {"meta_epochs": 2, "meta_min_steps": 5, **base.get("options", {})}
    return ExperimentConfig(**base)


def strip_timing(records):
    """Round records without their wall-clock times (the only part a rerun may change), NaN as the
    string "nan" (NaN != NaN: a record read back from JSON would never equal the one in memory)."""
    def value(v):
        return "nan" if isinstance(v, float) and v != v else v
    return [{k: value(v) for k, v in r.items() if not k.startswith("time_")} for r in records]


def checkpoint_state(path) -> dict:
    """The state sealed in a run's checkpoint.pt (its seal verified, as the engine reads it)."""
    import io

    from mqnet_fast.io import read_seal

    return torch.load(io.BytesIO(read_seal(path, "checkpoint")["data"]), weights_only=True)
