"""Triton kernels against the references (marker `triton`). Without a GPU they run on CPU tensors
under TRITON_INTERPRET=1, which conftest.py sets before anything imports triton; with a GPU they run
on it. Half-precision inputs are compared with the reference run on the same rounded values."""
import mmap
import sys

import pytest
import torch

from mqnet_fast import ops, reference
from testing import assert_close, assert_equal_indices, triton_device
from test_badge_kmeanspp import _inputs as badge_inputs, _verify_near_ties
from test_kcenter_greedy import _verify_greedy
from test_nearest import _check_against_float64, check_half_precision

pytestmark = pytest.mark.triton
DEVICE = triton_device()
if DEVICE is None:
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.mark.parametrize("n, d, n_labeled, budget", [(1, 1, 0, 1), (5, 2, 1, 4), (123, 7, 5, 40),
                                                     (301, 129, 0, 60), (1151, 19, 30, 25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kcenter_matches_reference(n, d, n_labeled, budget, dtype):
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    labeled = torch.randperm(n, generator=g)[:n_labeled]
    excluded = torch.zeros(n, dtype=torch.bool)
    if n > 10:
        excluded[torch.randperm(n, generator=g)[:3]] = True
    blocked = excluded.clone()
    blocked[labeled] = True
    budget = min(budget, n - int(blocked.sum()))
    result = ops.kcenter_greedy(x.to(DEVICE), labeled.to(DEVICE), budget, exclude=excluded.to(DEVICE),
                                backend="triton")
    result = type(result)(*(t.cpu() for t in result))
    expected = reference.kcenter_greedy(x, labeled, budget, excluded)
    if dtype == torch.float64:
        assert_equal_indices(result.indices, expected[0])
    _verify_greedy(x, labeled, excluded, result, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n_labeled", [0, 9])
def test_kcenter_pruning_is_exact(dtype, n_labeled):
    """prune=True skips the rows a new center cannot improve: on clustered data (where most rows are
    skipped) it must give bit-identical picks, radii and distances to the unpruned kernel."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "ops"))
    from data import clustered
    from mqnet_fast.ops.kcenter_greedy_triton import run

    n, d, budget = 450, 37, 40  # n, d: not multiples of the 64-row, 64-wide blocks
    x, _ = clustered(n, d, classes=6, seed=n_labeled)
    x[[11, 12]] = x[10].clone()  # duplicate rows
    x = x.to(dtype).to(DEVICE)
    g = torch.Generator().manual_seed(1)
    labeled = torch.randperm(n, generator=g)[:n_labeled].to(DEVICE)
    excluded = torch.zeros(n, dtype=torch.bool, device=DEVICE)
    excluded[[3, 10]] = True
    skipped = torch.zeros(budget, dtype=torch.int64, device=DEVICE)
    pruned = [t.cpu() for t in run(x, labeled, budget, excluded, True, skipped)]
    plain = [t.cpu() for t in run(x, labeled, budget, excluded, False)]
    assert_equal_indices(pruned[0], plain[0], what="picks")
    for got, want, what in zip(pruned[1:], plain[1:], ("radii", "min_dist")):
        assert torch.equal(got, want), f"{what} differ: {(got - want).abs().max().item()}"
    # the test exercises the pruning: most rows are skipped once the centers cover the clusters
    assert skipped[budget // 2:].sum().item() > 0.5 * n * (budget - budget // 2), skipped.tolist()
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    result = ops.KCenterResult(*pruned)
    _verify_greedy(x.cpu().to(compute), labeled.cpu(), excluded.cpu(), result, compute)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kcenter_pruning_keeps_its_rounding_slack(dtype):
    """The pruning test skips a row only when D2 >= 4 min_d2 (1 + delta): a row whose new center's
    squared distance from its center exceeds 4 min_d2 by less than delta must still be read. (On a
    GPU the float64 case also checks that delta survives being passed as a float32 argument; the
    interpreter passes it in double precision.)"""
    from mqnet_fast.ops.kcenter_greedy_triton import run

    two_plus = 2 + 2 * torch.finfo(dtype).eps  # 2 + 1 ulp: D2 = 4 (1 + ~2 eps), within the slack
    x = torch.tensor([[0.0], [1.0], [two_plus]], dtype=dtype, device=DEVICE)  # center, row, next pick
    skipped = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    picks, _, _ = run(x, torch.tensor([0], device=DEVICE), 1, torch.zeros(3, dtype=torch.bool, device=DEVICE),
                      True, skipped)
    assert picks.tolist() == [2]
    assert skipped.item() == 1, "only the labeled row (distance 0) may be skipped; row 1 is within the slack"


def test_kcenter_ties_duplicates_and_half_storage():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (200, 5), generator=g).float()  # many exact ties and duplicate rows
    labeled = torch.tensor([7])
    result = ops.kcenter_greedy(x.to(DEVICE), labeled.to(DEVICE), 150, backend="triton")
    expected = reference.kcenter_greedy(x, labeled, 150, torch.zeros(200, dtype=torch.bool))
    assert_equal_indices(result.indices.cpu(), expected[0])  # integer data: exact in float32
    for half in (torch.bfloat16, torch.float16):
        xh = torch.randn(333, 40, generator=g).to(half)
        got = ops.kcenter_greedy(xh.to(DEVICE), labeled.to(DEVICE), 50, backend="triton")
        _verify_greedy(xh.float(), labeled, torch.zeros(333, dtype=torch.bool),
                       type(got)(*(t.cpu() for t in got)), torch.float32)


@pytest.mark.parametrize("n, d, m", [(1, 1, 1), (5, 3, 1), (123, 7, 151), (300, 129, 65), (70, 16, 300), (64, 33, 128)])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_matches_reference(n, d, m, metric):
    g = torch.Generator().manual_seed(n * m + d)
    queries, keys = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    values, indices = ops.nearest(queries.to(DEVICE), keys.to(DEVICE), metric=metric, backend="triton")
    ref_values, _ = reference.nearest(queries, keys, metric)
    assert_close(values.cpu(), ref_values, torch.float32, atol=1e-5 * max(1.0, ref_values.abs().max().item()))
    _check_against_float64(queries, keys, metric, values.cpu(), indices.cpu(), torch.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_ties_and_half_storage(metric):
    keys = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(20, 1)  # ties across tiles
    queries = torch.tensor([[3.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    values, indices = ops.nearest(queries.to(DEVICE), keys.to(DEVICE), metric=metric, backend="triton")
    ref_values, ref_indices = reference.nearest(queries, keys, metric)
    assert_equal_indices(indices.cpu(), ref_indices)
    g = torch.Generator().manual_seed(1)
    # Triton's interpreter computes tl.dot on bfloat16 wrongly (numpy has no bfloat16): bf16 dots
    # are checked on a GPU only; fp16 exercises the same half-precision path here.
    for half in (torch.bfloat16, torch.float16) if DEVICE == "cuda" else (torch.float16,):
        q, k = torch.randn(90, 48, generator=g).to(half), torch.randn(130, 48, generator=g).to(half)
        values, indices = ops.nearest(q.to(DEVICE), k.to(DEVICE), metric=metric, backend="triton")
        check_half_precision(q, k, metric, values, indices, half)


@pytest.mark.parametrize("block_k", [64, 16])  # query tile resident / loop over d
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_deferred_reduction_is_identical(metric, block_k):
    """DEFER=True (per-slot bests, one reduction at the end) must give the same values and indices as
    the per-tile reduction, ties included: keys repeat across tiles and slots, the last tile is ragged."""
    from mqnet_fast import _triton

    g = torch.Generator().manual_seed(7)
    keys = torch.randn(40, 37, generator=g).repeat(4, 1)[:150]  # 150 keys: tiles of 16, ragged last
    keys[[5, 77]] = keys[100].clone()
    queries = torch.cat([torch.randn(70, 37, generator=g), keys[[100, 3, 149]]])
    module = _triton.kernel_module("nearest")
    results = {}
    try:
        for defer in (False, True):
            module.TUNED_CONFIG = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=block_k, DEFER=defer)
            for dtype in (torch.float32, torch.float16):
                results[defer, dtype] = ops.nearest(queries.to(dtype).to(DEVICE), keys.to(dtype).to(DEVICE),
                                                    metric=metric, backend="triton")
    finally:
        module.TUNED_CONFIG = None
    for dtype in (torch.float32, torch.float16):
        (values, indices), (deferred_values, deferred_indices) = results[False, dtype], results[True, dtype]
        assert_equal_indices(deferred_indices.cpu(), indices.cpu(), what=f"{dtype} indices")
        assert torch.equal(deferred_values.cpu(), values.cpu()), f"{dtype} values differ"
    _, ref_indices = reference.nearest(queries, keys, metric)
    assert_equal_indices(results[True, torch.float32][1][-3:].cpu(), ref_indices[-3:], what="exact ties")


# Offsets past 2^31 elements. The kernels cast a row index to int64 before multiplying it by the row
# stride: in int32, row * stride wraps once N * d reaches 2^31 (1.05M x 2048 features), to an address
# outside the tensor, and nothing reports it. A pool that large would need 8 GB or more; instead the
# tests below lay three rows WRAP_STRIDE elements apart in one lazily backed mapping (only the pages
# written are ever backed, a few KB), so row 2 starts at element 2^32 - 128: the same index * stride
# arithmetic, past 2^31, on a stride that still travels as an int32 (Triton types an int argument
# below 2^31 as i32, as it types d). int32 arithmetic wraps row 2's offset to -128, into a pad placed
# before row 0 that holds decoys (-2 x row 2 - 1), so a kernel with 32-bit offsets returns wrong
# values (an assertion) rather than reading unmapped memory (a crash). Under the interpreter the
# kernel's pointers are these host addresses; on a GPU the region is real device memory (16 GB).
WRAP_STRIDE = 2 ** 31 - 64
WRAP_PAD = 128  # elements before row 0: int32 wraps row 2's offset 2 * WRAP_STRIDE to -WRAP_PAD


def _region(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D tensor of numel elements on DEVICE whose memory is backed only where it is written."""
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if DEVICE == "cuda":
        if torch.cuda.mem_get_info()[0] < nbytes + 2 ** 30:
            pytest.skip(f"needs {nbytes / 2 ** 30:.0f} GB of free GPU memory")
        return torch.empty(numel, dtype=dtype, device="cuda")
    if not sys.platform.startswith("linux"):
        pytest.skip("the lazily backed host mapping is Linux's MAP_NORESERVE")
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)
    return torch.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=dtype)


def _rows_past_2_31(*fields: torch.Tensor) -> list[torch.Tensor]:
    """Views of the (3, width) fields with a row stride of WRAP_STRIDE elements (the fields side by
    side in each row, widths summing to at most WRAP_PAD), holding the same values, with decoys
    where int32 offsets would read row 2."""
    assert all(f.shape[0] == 3 for f in fields) and sum(f.shape[1] for f in fields) <= WRAP_PAD
    region = _region(WRAP_PAD + 2 * WRAP_STRIDE + WRAP_PAD, fields[0].dtype)
    views, column = [], 0
    for field in fields:
        width = field.shape[1]
        view = region.as_strided((3, width), (WRAP_STRIDE, 1), WRAP_PAD + column)
        view.copy_(field.to(region.device))
        wrapped = (2 * WRAP_STRIDE + 2 ** 31) % 2 ** 32 - 2 ** 31  # what int32 makes of row 2's offset
        assert wrapped == -WRAP_PAD
        region[WRAP_PAD + wrapped + column: WRAP_PAD + wrapped + column + width] = -2 * field[2] - 1
        views.append(view)
        column += width
    return views


@pytest.mark.parametrize("block_k", [64, 16])  # query tile resident (keys' offsets) / loop over d (both)
@pytest.mark.parametrize("l2", [False, True])
def test_nearest_offsets_past_2_31(block_k, l2):
    """The nearest kernel's key and query offsets (row * stride) in 64 bits: see WRAP_STRIDE."""
    from mqnet_fast import _triton

    module = _triton.kernel_module("nearest")
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(3, 40, generator=g)
    queries = keys[2] + 0.3 * torch.randn(3, 40, generator=g)  # key 2 is every query's best
    far_keys, far_queries = _rows_past_2_31(keys, queries)
    qq, kk = (queries ** 2).sum(1).to(DEVICE), (keys ** 2).sum(1).to(DEVICE)
    values = torch.empty(3, device=DEVICE)
    indices = torch.empty(3, dtype=torch.int64, device=DEVICE)
    module._nearest_kernel[(1,)](far_queries, far_keys, qq, kk, values, indices, 3, 3, 40, WRAP_STRIDE,
                                 WRAP_STRIDE, L2=l2, IEEE=True, Q_RESIDENT=block_k >= 40, DEFER=False,
                                 BLOCK_M=16, BLOCK_N=16, BLOCK_K=block_k)
    dots = queries.double() @ keys.double().T
    if l2:
        want_values = (qq.cpu().double()[:, None] + kk.cpu().double()[None, :] - 2 * dots).clamp_min(0).sqrt().min(1)
    else:
        want_values = dots.max(1)
    assert want_values.indices.tolist() == [2, 2, 2]
    assert_equal_indices(indices.cpu(), want_values.indices, what="indices")
    assert_close(values.cpu(), want_values.values, torch.float32, what="values")


def test_badge_update_offsets_past_2_31():
    """The BADGE update kernel's row offsets of a and h in 64 bits (see WRAP_STRIDE): D^2 of the three
    rows to center 0, then to center 2, against float64."""
    from mqnet_fast import _triton
    from mqnet_fast.reference.badge_kmeanspp import gradient_embedding_sqdist

    module = _triton.kernel_module("badge_kmeanspp")
    probs, feats = badge_inputs(3, 5, 40, torch.float32, seed=2)
    a = torch.nn.functional.one_hot(probs.argmax(1), 5).float() - probs
    far_a, far_h = _rows_past_2_31(a, feats)
    h2 = (feats * feats).sum(1)
    g, hnorm = (a * a).sum(1) * h2, h2.sqrt()
    d2 = torch.full((3,), float("inf"), device=DEVICE)
    block_sums = torch.empty(1, dtype=torch.float64, device=DEVICE)
    centers = torch.tensor([0, 2])
    expected = torch.full((3,), float("inf"), dtype=torch.float64)
    a64, h64 = a.double(), feats.double()
    for step, c in enumerate(centers.tolist()):
        module._update_kernel[(1,)](far_a, far_h, g.to(DEVICE), hnorm.to(DEVICE), d2, centers.to(DEVICE), block_sums,
                                    step, 3, 5, 40, WRAP_STRIDE, WRAP_STRIDE, (2 * 40 + 5 + 32) * module._EPS32,
                                    BLOCK_N=32, BLOCK_C=8, BLOCK_D=16)
        expected = torch.minimum(expected, gradient_embedding_sqdist(a64, h64, (a64 * a64).sum(1) * (h64 * h64).sum(1), c))
        expected[c] = 0
        assert_close(d2.cpu(), expected, torch.float32, atol=1e-5 * float(g.max()), what=f"D^2 after center {c}")


def test_mlp_offsets_past_2_31():
    """The MLP kernel's row offsets of z in 64 bits (see WRAP_STRIDE)."""
    from mqnet_fast import _triton

    module = _triton.kernel_module("nonneg_mlp_score")
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 2, generator=g)
    weights = [torch.rand(8, 2, generator=g), torch.rand(1, 8, generator=g)]  # positive: Phi is strictly increasing
    biases = [torch.randn(8, generator=g), torch.randn(1, generator=g)]
    (far_z,) = _rows_past_2_31(z)
    mean, std = torch.tensor([0.1, -0.2]), torch.tensor([1.5, 0.5])
    scores, flags = module.nonneg_mlp_score(far_z, *(t.to(DEVICE) for t in (weights[0], biases[0], weights[1],
                                                                          biases[1], mean, std)), True)
    assert int(flags) == 0
    want = reference.nonneg_mlp_score(z.double(), [w.double() for w in weights], [b.double() for b in biases],
                                      mean.double(), std.double())
    assert_close(scores.cpu(), want, torch.float32, atol=2e-6 * (weights[1].sum().item() + 1))


@pytest.mark.parametrize("n, c, d, k", [(1, 2, 1, 1), (9, 3, 4, 9), (123, 10, 33, 40), (700, 100, 65, 30)])
def test_badge_matches_reference(n, c, d, k):
    probs, feats = badge_inputs(n, c, d, torch.float32, seed=n + c)
    picks = ops.badge_kmeanspp(probs.to(DEVICE), feats.to(DEVICE), k, generator=torch.Generator().manual_seed(3),
                               backend="triton").cpu()
    expected = ops.badge_kmeanspp(probs, feats, k, generator=torch.Generator().manual_seed(3), backend="torch")
    assert len(set(picks.tolist())) == k
    _verify_near_ties(probs, feats, picks, expected, 3, torch.float32)


def test_badge_duplicates_and_half_storage():
    probs, feats = badge_inputs(40, 4, 8, torch.float32, seed=0)
    probs, feats = probs.repeat(3, 1), feats.repeat(3, 1)  # every row three times: D^2 hits 0 for all
    picks = ops.badge_kmeanspp(probs.to(DEVICE), feats.to(DEVICE), 100, generator=torch.Generator().manual_seed(0),
                               backend="triton").cpu()
    expected = ops.badge_kmeanspp(probs, feats, 100, generator=torch.Generator().manual_seed(0), backend="torch")
    assert len(set(picks.tolist())) == 100
    _verify_near_ties(probs, feats, picks, expected, 0, torch.float32)
    probs, feats = badge_inputs(200, 10, 32, torch.float32, seed=5)
    half = feats.to(torch.bfloat16)
    picks = ops.badge_kmeanspp(probs.to(DEVICE), half.to(DEVICE), 20, generator=torch.Generator().manual_seed(1),
                               backend="triton").cpu()
    expected = ops.badge_kmeanspp(probs, half.float(), 20, generator=torch.Generator().manual_seed(1), backend="torch")
    _verify_near_ties(probs, half.float(), picks, expected, 1, torch.float32)


def test_badge_pruned_update_matches_full_update():
    """The Cauchy-Schwarz skip leaves D^2 exactly where the full update would: run the update kernel
    over fixed centers and compare with the unpruned float64 update, on data where most rows are
    skipped and on rows whose features are parallel to the center's (the bound is tight there)."""
    from mqnet_fast import _triton
    from mqnet_fast.reference.badge_kmeanspp import gradient_embedding_sqdist

    module = _triton.kernel_module("badge_kmeanspp")
    probs, feats = badge_inputs(1500, 50, 40, torch.float32, seed=11)
    directions = torch.randn(3, 40, generator=torch.Generator().manual_seed(2))
    feats[:300] = directions[torch.arange(300) % 3] * torch.rand(300, 1, generator=torch.Generator().manual_seed(4))
    a = torch.nn.functional.one_hot(probs.argmax(1), 50).float() - probs
    h2 = (feats * feats).sum(1)
    g, hnorm = (a * a).sum(1) * h2, h2.sqrt()
    centers = torch.tensor([0, 1, 2, 700, 1499, 3, 301, 5, 6, 7])
    launch = module.launch_config(torch.device(DEVICE))
    n_blocks = -(-1500 // launch["BLOCK_N"])
    d2 = torch.full((1500,), float("inf"), device=DEVICE)
    block_sums = torch.empty(n_blocks, dtype=torch.float64, device=DEVICE)
    expected = torch.full((1500,), float("inf"), dtype=torch.float64)
    a64, h64 = a.double(), feats.double()
    g64 = (a64 * a64).sum(1) * (h64 * h64).sum(1)
    skipped = 0
    for step, c in enumerate(centers.tolist()):
        reach = 2 * (a @ a[c]).abs() * hnorm * hnorm[c]
        skipped += int((g + g[c] - reach * 1.001 > expected.float()).sum())
        module._update_kernel[(n_blocks,)](
            a.to(DEVICE), feats.to(DEVICE), g.to(DEVICE), hnorm.to(DEVICE), d2, centers.to(DEVICE), block_sums, step,
            1500, 50, 40, 50, 40, (2 * 40 + 50 + 32) * module._EPS32,
            BLOCK_N=launch["BLOCK_N"], BLOCK_C=64, BLOCK_D=16, num_warps=launch["num_warps"])
        expected = torch.minimum(expected, gradient_embedding_sqdist(a64, h64, g64, c))
        expected[c] = 0
        assert_close(d2.cpu().double(), expected, rtol=1e-5, atol=1e-5 * float(g64.max()))
        blocks = torch.nn.functional.pad(d2.cpu().double(), (0, n_blocks * launch["BLOCK_N"] - 1500))
        assert_close(block_sums.cpu(), blocks.view(n_blocks, -1).sum(1), rtol=1e-12, atol=0)
    assert skipped > 1500 * len(centers) // 2, f"the bound skipped only {skipped} row updates: not exercised"


def test_badge_many_blocks_matches_compiled_kernel():
    """More blocks than the sampler's chunk: same picks as the float32 C++ kernel (or near-ties)."""
    probs, feats = badge_inputs(2000, 100, 24, torch.float32, seed=9)
    picks = ops.badge_kmeanspp(probs.to(DEVICE), feats.to(DEVICE), 60, generator=torch.Generator().manual_seed(5),
                               backend="triton").cpu()
    expected = ops.badge_kmeanspp(probs, feats, 60, generator=torch.Generator().manual_seed(5), backend="torch")
    assert len(set(picks.tolist())) == 60
    _verify_near_ties(probs, feats, picks, expected, 5, torch.float32)


@pytest.mark.parametrize("n", [1, 123, 1151])
@pytest.mark.parametrize("hidden", [1, 64, 130])
@pytest.mark.parametrize("standardize", [False, True])
def test_mlp_matches_reference(n, hidden, standardize):
    g = torch.Generator().manual_seed(n + hidden)
    z = torch.randn(n, 2, generator=g) * 3
    weights = [torch.randn(hidden, 2, generator=g), torch.randn(1, hidden, generator=g)]
    biases = [torch.randn(hidden, generator=g), torch.randn(1, generator=g)]
    mean, std = (z.mean(0), (z.std(0) if n > 1 else torch.ones(2)).clamp_min(0.1)) if standardize else (None, None)
    expected = reference.nonneg_mlp_score(z, weights, biases, mean, std)
    to = (lambda t: None if t is None else t.to(DEVICE))
    got = ops.nonneg_mlp_score(z.to(DEVICE), [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases],
                               mean=to(mean), std=to(std), backend="triton").cpu()
    scale = weights[1].clamp_min(0).sum().item() + 1
    assert_close(got, expected, torch.float32, atol=2e-6 * scale)


@pytest.mark.parametrize("k", [1, 3, 4, 6])
@pytest.mark.parametrize("standardize", [False, True])
def test_mlp_other_input_widths(k, standardize):
    """k != 2 meta-inputs: the first four columns stay in registers, more are re-read per unit."""
    g = torch.Generator().manual_seed(k)
    z = torch.randn(123, k, generator=g) * 2
    weights, biases = [torch.randn(7, k, generator=g), torch.randn(1, 7, generator=g)], [torch.randn(7, generator=g), torch.randn(1, generator=g)]
    mean, std = (z.mean(0), z.std(0)) if standardize else (None, None)
    expected = reference.nonneg_mlp_score(z, weights, biases, mean, std)
    to = (lambda t: None if t is None else t.to(DEVICE))
    got = ops.nonneg_mlp_score(z.to(DEVICE), [to(w) for w in weights], [to(b) for b in biases], mean=to(mean),
                               std=to(std), backend="triton").cpu()
    assert_close(got, expected, torch.float32, atol=2e-6 * (weights[1].clamp_min(0).sum().item() + 1))


@pytest.mark.parametrize("argument, bit", [("z", 0), ("mean", 1), ("std", 2), ("weights[0]", 3), ("biases[0]", 4),
                                           ("weights[1]", 5), ("biases[1]", 6), ("std <= 0", 7)])
def test_mlp_flags_bad_values_in_kernel(argument, bit):
    """The kernel flags the argument holding NaN/Inf (or std <= 0) and the op names it in its error."""
    from mqnet_fast import _triton

    g = torch.Generator().manual_seed(bit)
    values = dict(z=torch.randn(300, 2, generator=g), mean=torch.zeros(2), std=torch.ones(2),
                  w0=torch.randn(64, 2, generator=g), b0=torch.randn(64, generator=g),
                  w1=torch.randn(1, 64, generator=g), b1=torch.randn(1, generator=g))
    key = {"weights[0]": "w0", "biases[0]": "b0", "weights[1]": "w1", "biases[1]": "b1", "std <= 0": "std"}.get(
        argument, argument)
    poisoned = values[key].flatten()
    poisoned[min(257, poisoned.numel() - 1)] = 0.0 if argument == "std <= 0" else (float("nan") if bit % 2 or argument == "std" else -float("inf"))
    values = {name: t.to(DEVICE) for name, t in values.items()}
    module = _triton.kernel_module("nonneg_mlp_score")
    _, flags = module.nonneg_mlp_score(values["z"], values["w0"], values["b0"], values["w1"], values["b1"],
                                       values["mean"], values["std"], True)
    assert int(flags) == 1 << bit
    message = "std must be > 0" if argument == "std <= 0" else f"{argument} holds 1 NaN or Inf"
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ops.nonneg_mlp_score(values["z"], [values["w0"], values["w1"]], [values["b0"], values["b1"]],
                             mean=values["mean"], std=values["std"], backend="triton")
    # the flag is cleared after the error: good input right after it scores normally
    z = values["z"].nan_to_num(0.0)
    w, b = [torch.rand(64, 2, device=DEVICE), torch.rand(1, 64, device=DEVICE)], [torch.rand(64, device=DEVICE), torch.rand(1, device=DEVICE)]
    got = ops.nonneg_mlp_score(z, w, b, backend="triton")
    assert_close(got.cpu(), reference.nonneg_mlp_score(z.cpu(), [t.cpu() for t in w], [t.cpu() for t in b], None, None),
                 torch.float32, atol=1e-5)


def test_triton_refusals():
    x = torch.randn(10, 3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="got float64 input; use backend='torch'"):
        ops.nearest(x, x, backend="triton")
    w = [torch.rand(4, 2, device=DEVICE), torch.rand(3, 4, device=DEVICE), torch.rand(1, 3, device=DEVICE)]
    b = [torch.rand(4, device=DEVICE), torch.rand(3, device=DEVICE), torch.rand(1, device=DEVICE)]
    with pytest.raises(ValueError, match="one hidden layer"):
        ops.nonneg_mlp_score(torch.rand(5, 2, device=DEVICE), w, b, backend="triton")


@pytest.mark.skipif(DEVICE != "cpu", reason="checks the CPU message only")
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.nearest(torch.randn(3, 2), torch.randn(2, 2), backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.compile of Triton ops needs a GPU (not the interpreter)")
def test_triton_ops_under_torch_compile():
    from mqnet_fast import _triton

    g = torch.Generator().manual_seed(0)
    z = torch.randn(1000, 2, generator=g).cuda()
    w = [torch.randn(64, 2, generator=g).cuda(), torch.randn(1, 64, generator=g).cuda()]
    b = [torch.randn(64, generator=g).cuda(), torch.randn(1, generator=g).cuda()]
    q, k = torch.randn(300, 32, generator=g).cuda(), torch.randn(200, 32, generator=g).cuda()

    def scores(z, q, k):
        values, _ = ops.nearest(q, k, backend="triton")
        return ops.nonneg_mlp_score(z, w, b, backend="triton"), values

    compiled = torch.compile(scores)  # the input checks break the graph; the ops themselves compile
    for got, expected in zip(compiled(z, q, k), scores(z, q, k)):
        assert_close(got.cpu(), expected.cpu(), torch.float32)
    picks = torch.compile(lambda x: ops.kcenter_greedy(x, [0], 10, backend="triton").indices)(q)
    assert_equal_indices(picks.cpu(), ops.kcenter_greedy(q.cpu(), [0], 10, backend="torch").indices)
    # fullgraph=True: the registered Triton ops compile into one graph; the public functions do not
    # (their value checks read tensors on the host), as on CPU (tests/test_nearest.py)
    torch._dynamo.reset()
    with pytest.raises((torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)):
        torch.compile(lambda q, k: ops.nearest(q, k, backend="triton"), fullgraph=True)(q, k)
    torch._dynamo.reset()
    values, indices = torch.compile(lambda q, k: torch.ops.mqnet_fast_triton.nearest(q, k, False), fullgraph=True)(q, k)
    want_values, want_indices = ops.nearest(q, k, backend="triton")
    assert_close(values.cpu(), want_values.cpu(), torch.float32)
    assert_equal_indices(indices.cpu(), want_indices.cpu())
    mlp = torch.compile(lambda z: torch.ops.mqnet_fast_triton.nonneg_mlp_score(z, w[0], b[0], w[1], b[1], z, z, False),
                        fullgraph=True)
    assert_close(mlp(z)[0].cpu(), ops.nonneg_mlp_score(z, w, b, backend="triton").cpu(), torch.float32)
    _triton.kernel_module("badge_kmeanspp")  # registers torch.ops.mqnet_fast_triton.badge_kmeanspp
    probs = torch.softmax(q[:, :10], 1)
    uniforms = torch.rand(9, dtype=torch.float64, generator=g).cuda()
    badge = torch.compile(lambda p, h: torch.ops.mqnet_fast_triton.badge_kmeanspp(p, h, 10, uniforms), fullgraph=True)
    assert_equal_indices(badge(probs, q).cpu(), torch.ops.mqnet_fast_triton.badge_kmeanspp(probs, q, 10, uniforms).cpu())
