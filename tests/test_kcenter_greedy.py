import pytest
import torch
from hypothesis import given, settings, strategies as st

from mqnet_fast import ops, reference
from testing import (CPU_BACKENDS, FLOAT_DTYPES, NEAR_TIE, assert_close, assert_equal_indices, needs_cpp,
                     triton_device)

# Where the Triton kernel runs in this session: a GPU, or CPU tensors under TRITON_INTERPRET=1 (which
# conftest.py sets where no GPU is visible); None if triton is not installed.
TRITON_DEVICE = triton_device()
ALL_BACKENDS = CPU_BACKENDS + ([pytest.param("triton", marks=pytest.mark.triton)] if TRITON_DEVICE else [])
needs_triton = pytest.mark.skipif(TRITON_DEVICE is None, reason="Triton kernels need a GPU or TRITON_INTERPRET=1")


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


# Exact duplicates (issue 10, defect 11). Real pools hold exact copies of a row; the same pool must
# give the same picks on every backend, so every copy must get bit-identical distances wherever it
# sits (in which row block, work item, pruned or read, labeled init or per-pick pass) and the
# lowest-index copy must win every tie.


def _kcenter(backend, x, labeled, budget, exclude=None):
    """ops.kcenter_greedy on the backend's device, the result back on the CPU."""
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    labeled = torch.as_tensor(labeled, dtype=torch.long).to(device)
    exclude = None if exclude is None else exclude.to(device)
    got = ops.kcenter_greedy(x.to(device), labeled, budget, exclude=exclude, backend=backend)
    return ops.KCenterResult(*(t.cpu() for t in got))


def _first_copy(x):
    """(N,) for each row the lowest index holding the same values."""
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    n = x.shape[0]
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long)
    return first.scatter_reduce(0, inverse, torch.arange(n), "amin")[inverse]


def _assert_copies_agree(x, result, labeled, excluded, what):
    """Copies have bit-identical min_dist, and no pick is made while a lower-index copy of it is
    still eligible (the lowest-index tie rule)."""
    first = _first_copy(x)
    differ = torch.nonzero(result.min_dist != result.min_dist[first]).flatten()
    if differ.numel():
        i, j = int(differ[0]), int(first[differ[0]])
        raise AssertionError(f"{what}: {differ.numel()} rows have a min_dist other than their first copy's: "
                             f"row {i} {result.min_dist[i].item()!r} != row {j} {result.min_dist[j].item()!r}")
    taken = excluded.clone()
    taken[labeled] = True
    for step, p in enumerate(result.indices.tolist()):
        copies = torch.nonzero(first == first[p]).flatten()
        lower = copies[(copies < p) & ~taken[copies]]
        assert lower.numel() == 0, f"{what}: pick {step} is row {p} while its copy {int(lower[0])} is eligible"
        taken[p] = True


def _repeated_pool(seed, dtype, distinct=50, copies=20, d=100):
    """The defect's pool: `distinct` random rows repeated `copies` times (row i copies row i % distinct).
    d = 100 leaves a tail after the kernels' 16- and 8-lane steps."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(distinct, d, generator=g, dtype=torch.float64).to(dtype).repeat(copies, 1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_repeated_rows_match_reference(backend, dtype):
    """50 distinct rows repeated 20 times, one labeled row, five seeds: the picks are the reference's
    in both dtypes -- the 49 other distinct rows, each by its lowest copy, then the radius-0 rows in
    index order. (The C++ kernel gave copies distances an ulp apart depending on whether the pruning
    sent them through the 8-row block or the one-row path, and picked row 80 for row 30 in float32.)
    Two seeds where the interpreter runs the Triton kernel (8 s each)."""
    n = 1000
    interpreted = backend == "triton" and TRITON_DEVICE == "cpu"
    for seed in range(2 if interpreted else 5):
        x = _repeated_pool(seed, dtype)
        labeled = torch.tensor([seed])
        excluded = torch.zeros(n, dtype=torch.bool)
        got = _kcenter(backend, x, labeled, 55)
        ref = reference.kcenter_greedy(x, labeled, 55, excluded)
        assert_equal_indices(got.indices, ref[0], f"seed {seed}: picks")
        assert torch.all(got.indices[:49] < 50), f"seed {seed}: a copy won a tie: {got.indices[:49].tolist()}"
        _assert_copies_agree(x, got, labeled, excluded, f"seed {seed}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_copies_get_bit_identical_distances(backend, dtype):
    """The direct check, before any distance reaches 0: after 20 picks every copy of a row has the
    same min_dist bits, on the repeated pool (copies 50 rows apart) and on a pool of 1,003
    rows (two 512-row work items, a short last block) whose copies sit at random places, with 9
    labeled rows."""
    x = _repeated_pool(1, dtype)
    got = _kcenter(backend, x, [0], 20)
    table = got.min_dist.view(20, 50)
    assert torch.equal(table, table[:1].expand_as(table)), "copies of a row got different min_dist"
    g = torch.Generator().manual_seed(2)
    base = torch.randn(120, 37, generator=g, dtype=torch.float64).to(dtype)
    x = base[torch.randint(0, 120, (1003,), generator=g)]
    labeled = torch.randperm(1003, generator=g)[:9]
    excluded = torch.zeros(1003, dtype=torch.bool)
    excluded[torch.randperm(1003, generator=g)[:30]] = True
    got = _kcenter(backend, x, labeled, 40, exclude=excluded)
    _assert_copies_agree(x, got, labeled, excluded, "scattered copies")


def _pool_with_copies(case, dtype, max_rows):
    """A random pool drawn with replacement from m distinct rows (so copies anywhere), some labeled
    and excluded rows; every fourth case has up to N/2 labeled rows (the labeled init spans GEMM tiles)."""
    g = torch.Generator().manual_seed(case)
    m = int(torch.randint(2, 120, (1,), generator=g))
    d = int(torch.randint(1, 80, (1,), generator=g))
    n = int(torch.randint(m, max_rows, (1,), generator=g))
    base = torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype)
    x = base[torch.randint(0, m, (n,), generator=g)]
    n_labeled = int(torch.randint(0, n // 2 if case % 4 == 3 else 12, (1,), generator=g))
    labeled = torch.randperm(n, generator=g)[:min(n_labeled, n - 1)]
    excluded = torch.zeros(n, dtype=torch.bool)
    excluded[torch.randperm(n, generator=g)[:n // 10]] = True
    excluded[labeled] = False
    available = n - labeled.numel() - int(excluded.sum())
    budget = min(available, int(torch.randint(1, m + 5, (1,), generator=g)))
    return x, labeled, excluded, budget


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fuzz_pools_with_copies(backend, dtype):
    """Random pools with duplicated rows: copies agree, the lowest copy is picked first, and float64
    picks are bit-for-bit the reference's (as the README states); float32 picks are the farthest up
    to rounding. (Before the fix the C++ kernel's float64 picks differed from the reference's on
    about half of such pools.) Fewer, smaller pools for Triton, which the interpreter runs slowly."""
    cases, max_rows = (6, 300) if backend == "triton" else (40, 1200)
    for case in range(cases):
        x, labeled, excluded, budget = _pool_with_copies(case, dtype, max_rows)
        got = _kcenter(backend, x, labeled, budget, exclude=excluded)
        _assert_copies_agree(x, got, labeled, excluded, f"case {case}")
        if dtype == torch.float64:
            ref = reference.kcenter_greedy(x, labeled, budget, excluded)
            assert_equal_indices(got.indices, ref[0], f"case {case}: picks")
        else:
            _verify_greedy(x, labeled, excluded, got, dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_labeled_and_picked_center_give_identical_distances(backend, dtype):
    """A row's distance to a center has the same bits whether the center came in labeled (the
    GEMM-narrowed init) or was picked (the per-pick pass): row 517 labeled with budget 0, against no
    labeled row and the rows below 517 excluded, so that the first pick is 517 (radius inf)."""
    g = torch.Generator().manual_seed(4)
    n, c = 1003, 517
    x = torch.randn(n, 37, generator=g, dtype=torch.float64).to(dtype)
    as_labeled = _kcenter(backend, x, [c], 0)
    as_picked = _kcenter(backend, x, [], 1, exclude=torch.arange(n) < c)
    assert as_picked.indices.tolist() == [c]
    differ = torch.nonzero(as_labeled.min_dist != as_picked.min_dist).flatten()
    if differ.numel():
        i = int(differ[0])
        raise AssertionError(f"{differ.numel()} rows differ, e.g. row {i}: labeled {as_labeled.min_dist[i].item()!r}, "
                             f"picked {as_picked.min_dist[i].item()!r}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_labeled_init_far_from_the_mean(backend, dtype):
    """A tight cluster far from the pool's mean, labeled centers inside it: the init's GEMM expansion
    (mean-centred norms ~1e4 / 1e10 against distances ~4) cannot rank the centers, so taking its
    argmin gave rows the distance to a farther center (up to 3x the nearest, float32 and float64).
    The candidates within the expansion's error bound are decided by the exact distance: min_dist
    is the reference's to rounding. On Triton in float32 (float64 makes one exact pass per center)
    the nearest kernel's argmin gave rows up to 3.9x the nearest center's distance; its init now
    narrows by a float32 GEMM's bound the same way."""
    g = torch.Generator().manual_seed(0)
    scale = 1e10 if dtype == torch.float64 else 1e4
    cluster = torch.randn(300, 8, generator=g, dtype=torch.float64) + scale
    spread = torch.randn(300, 8, generator=g, dtype=torch.float64) * scale
    x = torch.cat([cluster, spread]).to(dtype)
    labeled = torch.arange(0, 300, 3)
    got = _kcenter(backend, x, labeled, 0)
    ref = reference.kcenter_greedy(x, labeled, 0, torch.zeros(600, dtype=torch.bool))
    assert_close(got.min_dist[:300], ref[2][:300], dtype, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0,
                 what="cluster rows' min_dist")
    # and exactly the minimum of the backend's own distances: no center was dropped, however close
    singles = torch.stack([_kcenter(backend, x, [c], 0).min_dist[:300] for c in labeled.tolist()]).amin(0)
    differ = torch.nonzero(got.min_dist[:300] != singles).flatten()
    assert differ.numel() == 0, (f"{differ.numel()} cluster rows' min_dist is not the minimum over the centers, "
                                 f"e.g. row {int(differ[0])}" if differ.numel() else "")


@needs_triton
@pytest.mark.triton
@pytest.mark.parametrize("prune", [False, True])
def test_triton_row_offsets_are_64_bit(prune):
    """Issue 10, defect 7: row * stride passes 2^31 elements on pools of N * d >= 2^31 (1.05M x 2048),
    where int32 offsets wrap and the kernel reads other memory without an error. Honest at small
    cost: x is a (2064, 8) float16 view with row stride 2^20 into 2^32 + 2^24 elements of untouched
    memory (8 GiB of address space; only the written rows' pages are ever backed, reading the rest
    maps the zero page), so rows >= 2048 start past element 2^31 while the whole run reads 2064 x 8
    values. It starts 2^31 elements into the buffer, so that a wrapped offset (2^32 lower) still
    lands inside it: the bug shows as wrong distances, not a crash. The last rows are the farthest,
    so they are picked, and their distances must be the reference's (computed on a compact copy);
    one labeled row, so the float32 init's per-row-center pass reads the far rows too."""
    from mqnet_fast.ops.kcenter_greedy_triton import run

    n, d, stride, start = 2064, 8, 1 << 20, 1 << 31
    try:
        storage = torch.empty(start + n * stride, dtype=torch.float16, device=TRITON_DEVICE)
    except (RuntimeError, MemoryError) as err:
        pytest.skip(f"cannot reserve 8 GiB of address space here: {err}")
    x = storage.as_strided((n, d), (stride, 1), storage_offset=start)
    g = torch.Generator().manual_seed(5)
    values = torch.randn(n, d, generator=g)
    values[2048:] += 8  # rows past 2^31: the farthest
    x.copy_(values.to(x.device))
    compact = x.float().cpu()  # the float16-rounded values, contiguous
    labeled = torch.tensor([3], device=x.device)
    excluded = torch.zeros(n, dtype=torch.bool, device=x.device)
    picks, radii, min_dist = (t.cpu() for t in run(x, labeled, 6, excluded, prune))
    ref = reference.kcenter_greedy(compact, labeled.cpu(), 6, excluded.cpu())
    assert int(ref[0].max()) >= 2048
    assert_equal_indices(picks, ref[0], "picks")
    assert_close(radii, ref[1], torch.float32, what="radii")
    assert_close(min_dist, ref[2], torch.float32, what="min_dist")
