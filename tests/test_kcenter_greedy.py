import pytest
import torch
from hypothesis import given, settings, strategies as st

from mqnet_fast import ops, reference
from testing import CPU_BACKENDS, FLOAT_DTYPES, NEAR_TIE, assert_close, assert_equal_indices, needs_cpp


def _verify_greedy(x, labeled, excluded, result, dtype):
    """Checks a k-center result from first principles in float64: distinct eligible picks, each the
    farthest eligible row up to a float near-tie, radii and final distances exact."""
    x64 = x.double()
    n = x.shape[0]
    picks = result.indices.tolist()
    assert len(set(picks)) == len(picks), "picks are not distinct"
    eligible = ~excluded.clone()
    eligible[labeled] = False
    centers = labeled.tolist()
    d2 = torch.full((n,), float("inf"), dtype=torch.float64)
    for c in centers:
        d2 = torch.minimum(d2, ((x64 - x64[c]) ** 2).sum(1))
    for step, p in enumerate(picks):
        assert eligible[p], f"pick {step} (row {p}) is labeled, excluded or already picked"
        best = d2[eligible].max()
        assert d2[p] >= best * (1 - NEAR_TIE[dtype]), (
            f"pick {step}: row {p} at squared distance {d2[p].item()} is not the farthest ({best.item()})")
        assert_close(result.radii[step:step + 1], d2[p:p + 1].sqrt(), dtype, what=f"radius {step}")
        eligible[p] = False
        d2 = torch.minimum(d2, ((x64 - x64[p]) ** 2).sum(1))
    scale = x64.abs().max().item()
    assert_close(result.min_dist, d2.sqrt(), dtype, atol=NEAR_TIE[dtype] * scale, what="min_dist")


SHAPES = [  # N, d, labeled, budget
    (1, 1, 0, 1),
    (1, 3, 0, 0),
    (5, 2, 1, 4),        # budget = all remaining rows
    (123, 7, 5, 40),
    (300, 64, 0, 299),
    (1151, 129, 30, 100),
    (2500, 33, 600, 150),  # labeled spans several GEMM tiles, rows several chunks
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n,d,n_labeled,budget", SHAPES)
def test_matches_reference(backend, dtype, n, d, n_labeled, budget):
    g = torch.Generator().manual_seed(n * 31 + d)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    labeled = torch.randperm(n, generator=g)[:n_labeled]
    got = ops.kcenter_greedy(x, labeled, budget, backend=backend)
    excluded = torch.zeros(n, dtype=torch.bool)
    _verify_greedy(x, labeled, excluded, got, dtype)
    if dtype == torch.float64:  # no near-ties at this precision: the exact same picks
        ref = reference.kcenter_greedy(x, labeled, budget, excluded)
        assert_equal_indices(got.indices, ref[0], "picks")
        assert_close(got.radii, ref[1], what="radii")
        assert_close(got.min_dist, ref[2], what="min_dist")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_exact_ties_and_duplicates(backend, dtype):
    # Integer coordinates: every squared distance is exact, so ties are exact ties in any order.
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 4, (40, 5), generator=g).to(dtype)
    x = torch.cat([base, base, base[:13]])  # every row duplicated
    labeled = torch.tensor([3, 50])
    budget = x.shape[0] - 2  # everything: late picks all have radius 0
    got = ops.kcenter_greedy(x, labeled, budget, backend=backend)
    ref = reference.kcenter_greedy(x, labeled, budget, torch.zeros(len(x), dtype=torch.bool))
    assert_equal_indices(got.indices, ref[0], "picks")
    assert_close(got.radii, ref[1], dtype, what="radii")  # torch's vectorized sqrt is not always correctly rounded
    zero = torch.nonzero(got.radii == 0).flatten()
    assert zero.numel() > 0
    tail = got.indices[zero[0]:]
    assert torch.equal(tail, tail.sort().values), "radius-0 picks must come in index order"
    assert torch.all(got.min_dist == 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_labeled_starts_at_lowest_eligible(backend):
    x = torch.randn(50, 4, dtype=torch.float64)
    got = ops.kcenter_greedy(x, [], 3, exclude=[0, 1], backend=backend)
    assert got.indices[0] == 2 and torch.isinf(got.radii[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("as_mask", [False, True])
def test_exclude(backend, as_mask):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    rows = torch.randperm(200, generator=g)[:150]
    exclude = torch.zeros(200, dtype=torch.bool).index_fill_(0, rows, True) if as_mask else rows
    got = ops.kcenter_greedy(x, [0, 1], 48, exclude=exclude, backend=backend)
    mask = torch.zeros(200, dtype=torch.bool)
    mask[rows] = True
    assert not mask[got.indices].any()
    ref = reference.kcenter_greedy(x, torch.tensor([0, 1]), 48, mask)
    assert_equal_indices(got.indices, ref[0], "picks")
    assert_close(got.min_dist, ref[2], what="min_dist (excluded rows tracked too)")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_large_magnitudes(backend, dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(400, 16, generator=g, dtype=torch.float64) * 1e3 + 1e5).to(dtype)
    labeled = torch.arange(10)
    got = ops.kcenter_greedy(x, labeled, 60, backend=backend)
    _verify_greedy(x, labeled, torch.zeros(400, dtype=torch.bool), got, dtype)


@needs_cpp
def test_noncontiguous_and_bf16():
    g = torch.Generator().manual_seed(3)
    xt = torch.randn(9, 333, generator=g)
    x = xt.T  # (333, 9), not contiguous
    assert not x.is_contiguous()
    got = ops.kcenter_greedy(x, [5], 20, backend="cpp")
    want = ops.kcenter_greedy(x.contiguous(), [5], 20, backend="cpp")
    assert_equal_indices(got.indices, want.indices, "non-contiguous picks")
    xb = x.bfloat16()
    got = ops.kcenter_greedy(xb, [5], 20, backend="cpp")
    assert got.radii.dtype == torch.float32
    assert_equal_indices(got.indices, ops.kcenter_greedy(xb.float(), [5], 20, backend="torch").indices, "bf16")


@needs_cpp
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 6), data=st.data())
def test_property_integer_data_matches_reference(n, d, data):
    x = torch.tensor(data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=d, max_size=d),
                                        min_size=n, max_size=n)), dtype=torch.float32)
    labeled = torch.tensor(sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n))), dtype=torch.long)
    budget = data.draw(st.integers(0, n - labeled.numel()))
    got = ops.kcenter_greedy(x, labeled, budget, backend="cpp")
    ref = reference.kcenter_greedy(x, labeled, budget, torch.zeros(n, dtype=torch.bool))
    assert_equal_indices(got.indices, ref[0], "picks")
    assert_close(got.min_dist, ref[2], torch.float32, what="min_dist")


@needs_cpp
def test_opcheck():
    x = torch.randn(64, 5)
    torch.library.opcheck(torch.ops.mqnet_fast.kcenter_greedy.default,
                          (x, torch.tensor([1, 2]), 7, torch.zeros(64, dtype=torch.bool)))


BAD = [
    (lambda: ops.kcenter_greedy(torch.randn(5), [], 1), ValueError, "x must be 2-D"),
    (lambda: ops.kcenter_greedy(torch.randn(0, 3), [], 0), ValueError, "x is empty"),
    (lambda: ops.kcenter_greedy(torch.tensor([[0.0], [float("nan")]]), [], 1), ValueError, "x holds 1 NaN"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [], 6), ValueError, r"budget \(6\) exceeds the 5 rows"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [0, 1], 4), ValueError, r"budget \(4\) exceeds the 3 rows"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [], -1), ValueError, "budget must be >= 0"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [], 1.5), TypeError, "budget must be an int"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [7], 1), IndexError, "labeled holds an index out of range"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [], 1, exclude=torch.zeros(4, dtype=torch.bool)),
     ValueError, r"exclude as a bool mask must have shape \(5,\)"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2), [], 1, backend="fast"), ValueError, "backend must be one of"),
    (lambda: ops.kcenter_greedy(torch.randn(5, 2, dtype=torch.float64), torch.tensor([0.0]), 1),
     TypeError, "labeled must be an integer tensor"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@needs_cpp
def test_kernel_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match=r"budget \(3\) exceeds the 2 rows"):
        torch.ops.mqnet_fast.kcenter_greedy(torch.randn(3, 2), torch.tensor([0]), 3, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        torch.ops.mqnet_fast.kcenter_greedy(torch.ones(3, 2, dtype=torch.int32), torch.tensor([0]), 1,
                                            torch.zeros(3, dtype=torch.bool))
