"""CUDA-source kernels (csrc/cuda/*.cu) against the references; skipped where no GPU is visible
(conftest.py) or _C was built without CUDA."""
import pytest
import torch

from mqnet_fast import compiled_backends, ops, reference
from testing import assert_close, assert_equal_indices
from test_kcenter_greedy import _verify_greedy

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif("cuda" not in compiled_backends(), reason="mqnet_fast._C built without CUDA")]


@pytest.mark.parametrize("n, d, n_labeled, budget", [(1, 1, 0, 1), (5, 2, 1, 4), (123, 7, 5, 40),
                                                     (1151, 129, 30, 100), (20000, 64, 10, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kcenter(n, d, n_labeled, budget, dtype):
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    labeled = torch.randperm(n, generator=g)[:n_labeled]
    budget = min(budget, n - n_labeled)
    got = ops.kcenter_greedy(x.cuda(), labeled.cuda(), budget, backend="cuda")
    got = type(got)(*(t.cpu() for t in got))
    ref_x = x.float() if dtype == torch.bfloat16 else x
    if dtype == torch.float64:
        expected = reference.kcenter_greedy(ref_x, labeled, budget, torch.zeros(n, dtype=torch.bool))
        assert_equal_indices(got.indices, expected[0])
    _verify_greedy(ref_x, labeled, torch.zeros(n, dtype=torch.bool), got,
                   torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kcenter_copies(dtype):
    """Exact duplicates (issue 10, defect 11): on the defect's pool (50 distinct rows repeated 20
    times, one labeled row, five seeds) the picks are the reference's and copies get bit-identical
    distances; on pools with copies at random places, copies agree and the lowest copy is picked first."""
    from test_kcenter_greedy import _assert_copies_agree, _pool_with_copies, _repeated_pool

    def run(x, labeled, budget, excluded):
        got = ops.kcenter_greedy(x.cuda(), labeled.cuda(), budget, exclude=excluded.cuda(), backend="cuda")
        return type(got)(*(t.cpu() for t in got))

    for seed in range(5):
        x = _repeated_pool(seed, dtype)
        ref_x = x.float() if dtype == torch.bfloat16 else x
        labeled, excluded = torch.tensor([seed]), torch.zeros(1000, dtype=torch.bool)
        got = run(x, labeled, 55, excluded)
        assert_equal_indices(got.indices, reference.kcenter_greedy(ref_x, labeled, 55, excluded)[0], f"seed {seed}")
        _assert_copies_agree(ref_x, got, labeled, excluded, f"seed {seed}")
    for case in range(20):
        x, labeled, excluded, budget = _pool_with_copies(case, torch.float64, 1200)
        x = x.to(dtype)
        ref_x = x.float() if dtype == torch.bfloat16 else x
        got = run(x, labeled, budget, excluded)
        _assert_copies_agree(ref_x, got, labeled, excluded, f"case {case}")
        if dtype == torch.float64:
            assert_equal_indices(got.indices, reference.kcenter_greedy(x, labeled, budget, excluded)[0], f"case {case}")


@pytest.mark.parametrize("n", [1, 123, 100_003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp(n, dtype):
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, 2, generator=g, dtype=dtype)
    w = [torch.randn(64, 2, generator=g, dtype=dtype), torch.randn(1, 64, generator=g, dtype=dtype)]
    b = [torch.randn(64, generator=g, dtype=dtype), torch.randn(1, generator=g, dtype=dtype)]
    mean, std = torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype) * 1.5
    expected = reference.nonneg_mlp_score(z, w, b, mean, std)
    got = ops.nonneg_mlp_score(z.cuda(), [t.cuda() for t in w], [t.cuda() for t in b], mean=mean.cuda(),
                               std=std.cuda(), backend="cuda").cpu()
    assert_close(got, expected, dtype, atol=(2e-5 if dtype == torch.float32 else 1e-12) * w[1].clamp_min(0).sum().item())


def test_auto_on_cuda_tensors_matches_reference():
    x = torch.randn(500, 16)
    got = ops.kcenter_greedy(x.cuda().double(), [0], 20).indices.cpu()
    assert_equal_indices(got, reference.kcenter_greedy(x.double(), torch.tensor([0]), 20,
                                                       torch.zeros(500, dtype=torch.bool))[0])


@pytest.mark.parametrize("n, c, d, k", [(1, 2, 1, 1), (123, 10, 33, 40), (5000, 100, 130, 200)])
@pytest.mark.parametrize("feats_dtype", [torch.float32, torch.bfloat16])
def test_badge(n, c, d, k, feats_dtype):
    from test_badge_kmeanspp import _inputs, _verify_near_ties

    probs, feats = _inputs(n, c, d, torch.float32, seed=n + c)
    feats = feats.to(feats_dtype)
    picks = ops.badge_kmeanspp(probs.cuda(), feats.cuda(), k, generator=torch.Generator().manual_seed(2),
                               backend="cuda").cpu()
    expected = ops.badge_kmeanspp(probs, feats.float(), k, generator=torch.Generator().manual_seed(2), backend="torch")
    assert len(set(picks.tolist())) == k
    _verify_near_ties(probs, feats.float(), picks, expected, 2, torch.float32)


@pytest.mark.parametrize("n, d, m", [(1, 1, 1), (123, 7, 151), (1151, 129, 65), (700, 16, 3000)])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nearest(n, d, m, metric, dtype):
    from test_nearest import _check_against_float64, check_half_precision

    g = torch.Generator().manual_seed(n + m)
    queries, keys = torch.randn(n, d, generator=g).to(dtype), torch.randn(m, d, generator=g).to(dtype)
    values, indices = ops.nearest(queries.cuda(), keys.cuda(), metric=metric, backend="cuda")
    if dtype == torch.float32:
        _check_against_float64(queries, keys, metric, values.cpu(), indices.cpu(), torch.float32)
    else:  # the same half-precision contract as the Triton kernel's (normalized in float32, stored in half)
        check_half_precision(queries, keys, metric, values, indices, dtype)
