"""Input validation shared by the public ops: every error names the argument and what it got."""
from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _type_name(value) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def tensors(*, optional: bool = False, **named) -> None:
    """Each argument is a torch.Tensor (or None, if optional). The ops take torch tensors only, so a
    list or a NumPy array is refused here, by name, before anything reads it; row indices are the
    exception (`indices`, `row_mask`)."""
    for name, value in named.items():
        if isinstance(value, torch.Tensor) or (optional and value is None):
            continue
        hint = " (torch.from_numpy converts a NumPy array)" if hasattr(value, "__array_interface__") else ""
        raise TypeError(f"{name} must be a torch.Tensor{' or None' if optional else ''}, "
                        f"got {_type_name(value)}{hint}")


def tensor_list(name: str, value) -> list:
    """A list or tuple of tensors (one per layer), each checked by its name `name[i]`."""
    if isinstance(value, (torch.Tensor, str, bytes)) or hasattr(value, "__array__") or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list or tuple of torch.Tensor, one per layer, got {_type_name(value)}")
    value = list(value)
    tensors(**{f"{name}[{i}]": t for i, t in enumerate(value)})
    return value


def matrix(name: str, t, *, rows: int | None = None, cols: int | None = None,
           allow_empty: bool = False, check_values: bool = True, products: int = 0,
           terms: int | None = None) -> torch.Tensor:
    """t, checked to be a 2-D float tensor of the given size, and returned detached (the ops are not
    differentiable; a tensor that requires grad is read as its values). Its values are checked
    finite unless check_values is False (for a kernel that checks them itself), and with `products`
    > 0 small enough that sums over a row of products of `products` squares (squared distances,
    norms; 2: a product of two similarities) do not overflow the compute dtype (`magnitude`; `terms`:
    how many such products a result sums, default the columns)."""
    tensors(**{name: t})
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
        if products:
            magnitude(name, t, products, terms)  # its one read of t proves the values finite too
        else:
            finite(name, t)
    return t.detach()


def magnitude(name: str, t: torch.Tensor, products: int = 1, terms: int | None = None) -> None:
    """Refuse values so large that a squared distance or a dot product over a row overflows the
    compute dtype (float32 for float32 and half inputs): every |value| must stay below
    (finfo.max / (4 d)) ** (1 / (2 products)), 9.2e18 in float32 for one column and one product.
    Beyond it the kernels would return inf radii or zero similarities instead of the answer.
    `terms`: the number of terms summed (default: the last dimension, d)."""
    if t.numel() == 0:
        return
    low, high = torch.aminmax(t.detach())  # NaN propagates: finite extremes mean finite values
    top = max(abs(float(low)), abs(float(high)))
    if not math.isfinite(top):
        finite(name, t)  # names the count of NaN or Inf values
    dtype = compute_dtype(t)
    terms = t.shape[-1] if terms is None else terms
    bound = (torch.finfo(dtype).max / (4 * max(1, terms))) ** (1 / (2 * products))
    if top >= bound:
        compute = str(dtype).replace("torch.", "")
        raise ValueError(f"{name} holds values up to {top:.3g} in magnitude: its sums of squares overflow {compute} "
                         f"(|values| must stay below {bound:.3g} for sums of {terms} term(s)); scale {name} down, "
                         "or pass float64")


def copy_memory(name: str, t: torch.Tensor, dtype: torch.dtype, *others: torch.Tensor) -> None:
    """Refuse (MemoryLimitError, a ValueError) where the contiguous `dtype` copies the kernels make of
    `t` (and `others`) need more memory than the device has available: a stride-0 expanded tensor
    (torch.expand) takes no memory until it is copied."""
    from mqnet_fast import _memory

    need = sum(x.numel() * torch.empty((), dtype=dtype).element_size() for x in (t, *others)
               if not x.is_contiguous() or x.dtype != dtype)
    if need:
        try:
            _memory.check(f"{name} as contiguous {str(dtype).replace('torch.', '')}", need, t.device)
        except _memory.MemoryLimitError as err:
            raise _memory.MemoryLimitError(f"{err}; pass a contiguous tensor of that dtype, or fewer rows") from None


def flags(name: str, t: torch.Tensor) -> torch.Tensor:
    """A bool tensor from bool or 0/1 integers."""
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() or not bool(((t == 0) | (t == 1)).all()):
        raise TypeError(f"{name} must be bool (or 0/1 integers), got {t.dtype}")
    return t.bool()


def scores(name: str, t: torch.Tensor) -> None:
    """A 1-D real-valued tensor of finite values (the error names `name`)."""
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be a real-valued (floating or integer) tensor, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(t.shape)}")
    finite(name, t)


def probabilities(name: str, t: torch.Tensor, tolerance: float | None = None) -> None:
    """Rows of non-negative values summing to 1 (within `tolerance`; default 1e-3, 3e-2 for half
    precision): a softmax, not logits."""
    if t.numel() == 0:
        return
    if tolerance is None:  # a softmax in half precision cast to float32 is off by up to ~1e-2
        tolerance = 3e-2 if t.dtype in (torch.float16, torch.bfloat16) else 1e-2
    instead = "pass logits instead for unnormalized scores" if name == "probs" else "give a softmax"
    low = float(t.min())
    if low < 0:
        raise ValueError(f"{name} must be probabilities (rows of values >= 0 summing to 1), but holds {low:.3g}; "
                         f"{instead}")
    sums = t.sum(1, dtype=torch.float64)
    off = torch.nonzero((sums - 1).abs() > tolerance).flatten()
    if off.numel():
        row = int(off[0])
        raise ValueError(f"{name} must be probabilities (rows summing to 1), but row {row} sums to "
                         f"{float(sums[row]):.6g} ({off.numel()} row(s) off by more than {tolerance:g}); {instead}")


def finite(name: str, t: torch.Tensor) -> None:
    # A finite sum proves every entry finite (NaN and Inf propagate) at the cost of one read; a
    # non-finite sum may be an overflow of finite values, so it is checked entry by entry.
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} holds {bad} NaN or Inf value(s)")


def same_device(**named) -> torch.device:
    """The one device of the tensors among the arguments; the others (None, index lists) are skipped.
    The ops check their tensor arguments' types first (`tensors`), so at least one is a tensor."""
    devices = {n: t.device for n, t in named.items() if isinstance(t, torch.Tensor)}
    if not devices:
        raise TypeError(f"none of {', '.join(named)} is a torch.Tensor")
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return next(iter(devices.values()))


def _index_tensor(name: str, idx) -> torch.Tensor:
    """Row indices or a row mask as a tensor: a tensor as given; a list, tuple, range or NumPy array
    converted with its own element type (never cast to int64 first, which would turn a bool mask
    into the indices 0 and 1 and truncate floats)."""
    if isinstance(idx, torch.Tensor):
        return idx
    if isinstance(idx, (str, bytes)) or not isinstance(idx, Iterable):
        raise TypeError(f"{name} must be row indices (a 1-D integer tensor, list, range or NumPy array) or None, "
                        f"got {_type_name(idx)}")
    try:
        t = torch.as_tensor(idx if hasattr(idx, "__array__") else list(idx))
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must hold integer row indices; {_type_name(idx)} could not be converted: {err}") from None
    return t.long() if t.numel() == 0 else t  # an empty list converts to float32


def indices(name: str, idx, n: int, device: torch.device) -> torch.Tensor:
    """A 1-D int64 index tensor into n rows (from a tensor, list, range or NumPy array)."""
    if idx is None:
        return torch.empty(0, dtype=torch.long, device=device)
    t = _index_tensor(name, idx)
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
    """A (n,) bool mask from None, a bool mask, or row indices (tensors, lists or NumPy arrays)."""
    if rows is None:
        return torch.zeros(n, dtype=torch.bool, device=device)
    rows = _index_tensor(name, rows)
    if rows.dtype == torch.bool:
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
