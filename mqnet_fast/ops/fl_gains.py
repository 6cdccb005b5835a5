"""fl_gains: saturated facility-location gains (SIMILAR's FLCMI greedy)."""
from __future__ import annotations

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import _triton, reference
from mqnet_fast._library import has_compiled
from mqnet_fast.ops._backends import Backends, resolve

# No CUDA-source kernel; the Triton kernel computes in float32.
TABLE = Backends("fl_gains", kernels=("torch", "cpp", "triton"), float32=("triton",),
                 missing={"cuda": "fl_gains: there is no CUDA-source kernel; on CUDA tensors use backend 'triton' or 'auto'"})


def fl_gains(ground: torch.Tensor, candidates: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
             ground2: torch.Tensor | None = None, candidates2: torch.Tensor | None = None,
             backend: str = "auto") -> torch.Tensor:
    """Saturated facility-location gains (SIMILAR's FLCMI greedy; plain facility location with
    hi = +inf): for every candidate j,

        gain_j = sum_i max(min(s_ij, hi_i) - lo_i, 0),   s_ij = ground_i . candidates_j
                                                          (times ground2_i . candidates2_j if given).

    For f(A) = sum_i g_i(max_{a in A} s_ia) with g_i(m) = max(min(m, a_i) - b_i, 0), the gain of adding
    j is this with lo_i = clamp(current max_i, b_i, a_i) and hi_i = a_i. Unit rows make s a cosine
    similarity; two factors give the cosine of Kronecker products (a gradient embedding's) without
    forming them.

    Args:
        ground: (n, d) float; candidates: (m, d); lo: (n,) finite; hi: (n,), +inf allowed;
        ground2: (n, e) and candidates2: (m, e), both or neither.

    Returns: (m,) in the compute dtype (float32 or float64). The compiled kernel sums each
    candidate's terms in float64 in ground-row order, the Triton kernel in float32 per tile; the
    reference sums the (n, chunk) block in the input dtype. No (n, m) matrix is formed.

    Example:
        >>> g = torch.eye(3); lo = torch.zeros(3); hi = torch.full((3,), float("inf"))
        >>> fl_gains(g, torch.tensor([[1.0, 1.0, 0.0]]), lo, hi)
        tensor([2.])
    """
    checks.tensors(ground=ground, candidates=candidates, lo=lo, hi=hi)
    checks.tensors(optional=True, ground2=ground2, candidates2=candidates2)
    device = checks.same_device(ground=ground, candidates=candidates, lo=lo, hi=hi, ground2=ground2,
                                candidates2=candidates2)
    # a gain sums n similarities, each a sum over d (times one over e) products: bounded so that no
    # partial sum overflows the compute dtype
    factors = 1 if ground2 is None else 2
    terms = ground.shape[0] * ground.shape[1] * (1 if ground2 is None else max(1, ground2.shape[-1]))
    ground = checks.matrix("ground", ground, products=factors, terms=terms)
    candidates = checks.matrix("candidates", candidates, cols=ground.shape[1], allow_empty=True, products=factors,
                               terms=terms)
    lo, hi = lo.detach(), hi.detach()
    n = ground.shape[0]
    for name, t in (("lo", lo), ("hi", hi)):
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"{name} must be 1-D with one value per ground row ({n}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    checks.finite("lo", lo)
    if bool(torch.isnan(hi).any()) or bool((hi == float("-inf")).any()):
        raise ValueError("hi holds NaN or -inf (+inf is allowed: no cap)")
    if (ground2 is None) != (candidates2 is None):
        raise ValueError("give ground2 and candidates2 together (the second similarity factor), or neither")
    dtype = torch.promote_types(checks.compute_dtype(ground), checks.compute_dtype(candidates))
    if ground2 is not None:
        ground2 = checks.matrix("ground2", ground2, rows=n, products=factors, terms=terms)
        candidates2 = checks.matrix("candidates2", candidates2, rows=candidates.shape[0], cols=ground2.shape[1],
                                    allow_empty=True, products=factors, terms=terms)
        dtype = torch.promote_types(dtype, torch.promote_types(checks.compute_dtype(ground2),
                                                               checks.compute_dtype(candidates2)))
    chosen = resolve(TABLE, backend, device, dtype)
    if candidates.shape[0] == 0:
        return torch.zeros(0, dtype=dtype, device=device)
    if chosen == "triton":
        return _triton.kernel_module("fl_gains").fl_gains(ground, candidates, lo, hi, ground2, candidates2)
    ground, candidates, lo, hi = (t.to(dtype) for t in (ground, candidates, lo, hi))
    if ground2 is not None:
        ground2, candidates2 = ground2.to(dtype), candidates2.to(dtype)
    if chosen == "torch":
        return reference.fl_gains(ground, candidates, lo, hi, ground2, candidates2)
    return torch.ops.mqnet_fast.fl_gains(ground, candidates, lo, hi, ground2, candidates2)


def _register_fake() -> None:
    @torch.library.register_fake("mqnet_fast::fl_gains")
    def _(ground, candidates, lo, hi, ground2, candidates2):
        return candidates.new_empty((candidates.shape[0],))


if has_compiled():
    _register_fake()
