"""ops.fl_gains, the saturated facility-location gains of SIMILAR's FLCMI greedy, against its
definition in float64 on many shapes, dtypes and backends, with one and two similarity factors."""
import pytest
import torch

from mqnet_fast import ops, reference
from testing import CPU_BACKENDS, FLOAT_DTYPES, assert_close, triton_device

SHAPES = [(1, 0, 1), (1, 1, 1), (63, 31, 7), (256, 64, 3), (257, 65, 33), (600, 130, 5)]


def _inputs(n, m, d, e, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ground = torch.randn(n, d, generator=g, dtype=torch.float64)
    cand = torch.randn(m, d, generator=g, dtype=torch.float64)
    lo = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    hi = lo + 2 * torch.rand(n, generator=g, dtype=torch.float64)
    hi[::5] = float("inf")  # no cap
    hi[1::7] = lo[1::7] - 0.1  # cap below the floor: these rows never gain
    two = dict(ground2=torch.randn(n, e, generator=g, dtype=torch.float64),
               candidates2=torch.randn(m, e, generator=g, dtype=torch.float64)) if e else {}
    return ground.to(dtype), cand.to(dtype), lo.to(dtype), hi.to(dtype), {k: v.to(dtype) for k, v in two.items()}


def _definition(ground, cand, lo, hi, two):
    """The definition, elementwise in float64 over the dense (n, m) matrix."""
    s = ground.double() @ cand.double().T
    if two:
        s = s * (two["ground2"].double() @ two["candidates2"].double().T)
    terms = torch.minimum(s, hi.double()[:, None]) - lo.double()[:, None]
    return torch.where(terms > 0, terms, torch.zeros_like(terms)).sum(0)


def _tolerance(ground, cand, two, dtype):
    """Scale of a gain's rounding: n times the largest |s_ij| (each term rounds like its dot)."""
    if cand.numel() == 0:
        return 0.0
    scale = (ground.double().abs().sum(1).max() * cand.double().abs().max()).item()
    if two:
        scale *= (two["ground2"].double().abs().sum(1).max() * two["candidates2"].double().abs().max()).item()
    return (2e-6 if dtype == torch.float32 else 1e-13) * scale * max(ground.shape[0], 1) ** 0.5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("e", [0, 4])
@pytest.mark.parametrize("n,m,d", SHAPES)
def test_matches_definition(backend, dtype, e, n, m, d):
    ground, cand, lo, hi, two = _inputs(n, m, d, e, seed=n + m + d + e, dtype=dtype)
    got = ops.fl_gains(ground, cand, lo, hi, backend=backend, **two)
    assert got.dtype == dtype and got.shape == (m,)
    want = _definition(ground, cand, lo, hi, two)
    assert_close(got, want, rtol=0, atol=_tolerance(ground, cand, two, dtype), what=f"{backend} {dtype}")


@pytest.mark.skipif(triton_device() is None, reason="triton unavailable (no GPU, TRITON_INTERPRET unset)")
@pytest.mark.parametrize("e", [0, 4])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (63, 31, 7), (130, 65, 33)])
def test_triton_matches_definition(e, n, m, d):
    ground, cand, lo, hi, two = _inputs(n, m, d, e, seed=7 * n + m)
    device = triton_device()
    got = ops.fl_gains(ground.to(device), cand.to(device), lo.to(device), hi.to(device), backend="triton",
                       **{k: v.to(device) for k, v in two.items()})
    assert got.dtype == torch.float32
    assert_close(got.cpu(), _definition(ground, cand, lo, hi, two), rtol=0,
                 atol=_tolerance(ground, cand, two, torch.float32), what="triton")


def test_hand_worked_gains():
    # ground e1, e2, (e1 + e2)/sqrt2; row 0 capped at 0.5, row 1 covered up to 0.25, row 2 free
    r = 2 ** -0.5
    ground = torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)
    lo = torch.tensor([0.0, 0.25, 0.0], dtype=torch.float64)
    hi = torch.tensor([0.5, float("inf"), float("inf")], dtype=torch.float64)
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # e1: row 0 min(1, .5) - 0 = .5; row 1 max(0 - .25, 0) = 0; row 2 r.  e2: 0 + .75 + r
    want = torch.tensor([0.5 + r, 0.75 + r], dtype=torch.float64)
    for backend in CPU_BACKENDS:
        assert_close(ops.fl_gains(ground, cand, lo, hi, backend=backend), want, what=backend)
    # a second factor of 1 everywhere changes nothing; of 0 zeroes every gain
    ones = dict(ground2=torch.ones(3, 1, dtype=torch.float64), candidates2=torch.ones(2, 1, dtype=torch.float64))
    assert_close(ops.fl_gains(ground, cand, lo, hi, **ones), want)
    zeros = dict(ground2=torch.ones(3, 1, dtype=torch.float64), candidates2=torch.zeros(2, 1, dtype=torch.float64))
    assert ops.fl_gains(ground, cand, lo, hi, **zeros).tolist() == [0.0, 0.0]


def test_reference_chunks_agree():
    ground, cand, lo, hi, two = _inputs(50, 300, 3, 2, seed=3, dtype=torch.float64)
    assert_close(reference.fl_gains(ground, cand, lo, hi, chunk=7, **two), reference.fl_gains(ground, cand, lo, hi, **two))


def test_bad_arguments_are_named():
    ground, cand, lo, hi, two = _inputs(10, 4, 3, 2, seed=1)
    cases = [
        (dict(lo=lo[:9]), ValueError, "lo must be 1-D with one value per ground row"),
        (dict(hi=hi[None]), ValueError, "hi must be 1-D"),
        (dict(candidates=cand[:, :2]), ValueError, "candidates must have 3 columns"),
        (dict(lo=torch.full((10,), float("nan"))), ValueError, "lo holds"),
        (dict(hi=torch.full((10,), float("nan"))), ValueError, "hi holds NaN"),
        (dict(ground2=two["ground2"]), ValueError, "give ground2 and candidates2 together"),
        (dict(ground2=two["ground2"][:9], candidates2=two["candidates2"]), ValueError, "ground2 must have 10 rows"),
        (dict(lo=torch.zeros(10, dtype=torch.long)), TypeError, "lo must be a floating tensor"),
        (dict(backend="cuda"), ValueError, "no CUDA-source kernel"),
    ]
    base = dict(ground=ground, candidates=cand, lo=lo, hi=hi)
    for change, kind, match in cases:
        args = {**base, **change}
        with pytest.raises(kind, match=match):
            ops.fl_gains(args.pop("ground"), args.pop("candidates"), args.pop("lo"), args.pop("hi"), **args)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="mqnet_fast._C is not built")
@pytest.mark.parametrize("e", [0, 4])
def test_opcheck(e):
    ground, cand, lo, hi, two = _inputs(33, 17, 5, e, seed=2)
    torch.library.opcheck(torch.ops.mqnet_fast.fl_gains.default,
                          (ground, cand, lo, hi, two.get("ground2"), two.get("candidates2")))
