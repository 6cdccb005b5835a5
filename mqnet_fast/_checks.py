"""Input validation shared by the public ops: every error names the argument and what it got."""
from __future__ import annotations

import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def matrix(name: str, t, *, rows: int | None = None, cols: int | None = None,
           allow_empty: bool = False, check_values: bool = True) -> torch.Tensor:
    """t, checked to be a 2-D float tensor of the given size; its values are checked finite unless
    check_values is False (for a kernel that checks them itself)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float64, bfloat16, float16), got {t.dtype}")
    if not allow_empty and t.shape[0] == 0:
        raise ValueError(f"{name} is empty: it must hold at least one row")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got {t.shape[0]}")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got {t.shape[1]}")
    if check_values:
        finite(name, t)
    return t


def finite(name: str, t: torch.Tensor) -> None:
    # A finite sum proves every entry finite (NaN and Inf propagate) at the cost of one read; a
    # non-finite sum may be an overflow of finite values, so it is checked entry by entry.
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} holds {bad} NaN or Inf value(s)")


def same_device(**tensors) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return next(iter(devices.values()))


def indices(name: str, idx, n: int, device: torch.device) -> torch.Tensor:
    """A 1-D int64 index tensor into n rows (from a tensor, list or range)."""
    if idx is None:
        return torch.empty(0, dtype=torch.long, device=device)
    t = idx if isinstance(idx, torch.Tensor) else torch.as_tensor(list(idx), dtype=torch.long)
    if t.dtype == torch.bool:
        raise TypeError(f"{name} must hold row indices, got a bool tensor")
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.long)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise IndexError(f"{name} holds an index out of range [0, {n}): min {int(t.min())}, max {int(t.max())}")
    return t


def row_mask(name: str, rows, n: int, device: torch.device) -> torch.Tensor:
    """A (n,) bool mask from None, a bool mask, or row indices."""
    if rows is None:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
        if rows.shape != (n,):
            raise ValueError(f"{name} as a bool mask must have shape ({n},), got {tuple(rows.shape)}")
        return rows.to(device)
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[indices(name, rows, n, device)] = True
    return mask


def count(name: str, value, *, low: int = 0, high: int | None = None, what: str = "") -> int:
    """An int (Python or NumPy integer) in [low, high]; `what` says what high stands for."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} ({value}) exceeds {what or high}")
    return value


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32/float64 stay; half-precision inputs are computed in float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
