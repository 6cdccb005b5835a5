import pytest
import torch

from mqnet_fast import ops, reference
from mqnet_fast.reference.badge_kmeanspp import gradient_embedding_sqdist
from testing import CPU_BACKENDS, FLOAT_DTYPES, NEAR_TIE, assert_equal_indices, needs_cpp


def _inputs(n, c, d, dtype, seed, temperature=3.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * temperature, 1).to(dtype)
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    return probs, feats


def _verify_near_ties(probs, feats, picks, ref_picks, seed, dtype):
    """Where float32 picks leave the reference, the first differing pick must be a near-tie in float64:
    the first pick a near-maximal |g|, later ones a row whose float64 cumulative-D^2 interval lies
    within rounding of the drawn target."""
    diff = torch.nonzero(picks != ref_picks).flatten()
    if not diff.numel():
        return
    s = int(diff[0])
    p64, h64 = probs.double(), feats.double()
    a = torch.nn.functional.one_hot(p64.argmax(1), p64.shape[1]).double() - p64
    g = (a * a).sum(1) * (h64 * h64).sum(1)
    if s == 0:
        assert g[picks[0]] >= g.max() * (1 - NEAR_TIE[dtype]), "first pick is not a near-maximal |g|"
        return
    d2 = torch.full_like(g, float("inf"))
    for c in picks[:s].tolist():
        d2 = torch.minimum(d2, gradient_embedding_sqdist(a, h64, g, c))
        d2[c] = 0
    cum = torch.cumsum(d2, 0)
    u = torch.rand(s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)[s - 1]
    target, p = u * cum[-1], int(picks[s])
    low = cum[p - 1] if p > 0 else cum.new_zeros(())
    slack = NEAR_TIE[dtype] * cum[-1]
    assert low - slack <= target <= cum[p] + slack, f"pick {s} (row {p}) is not a near-tie of the draw"


SHAPES = [  # N, C, d, k
    (1, 2, 3, 1),
    (5, 3, 4, 5),        # every row
    (123, 10, 7, 40),
    (1151, 100, 33, 60),
    (3000, 10, 129, 200),  # several row chunks, pruning active
    (400, 1, 5, 10),     # one class: every gradient embedding is 0
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n,c,d,k", SHAPES)
def test_matches_reference(backend, dtype, n, c, d, k):
    probs, feats = _inputs(n, c, d, dtype, seed=n + c)
    seed = 1234
    got = ops.badge_kmeanspp(probs, feats, k, generator=torch.Generator().manual_seed(seed), backend=backend)
    uniforms = torch.rand(max(k - 1, 0), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = reference.badge_kmeanspp(probs, feats, k, uniforms)
    assert got.dtype == torch.long and got.shape == (k,)
    assert len(set(got.tolist())) == k, "picks are not distinct"
    if dtype == torch.float64:
        assert_equal_indices(got, want, "picks")
    else:
        _verify_near_ties(probs, feats, got, want, seed, dtype)
    if c == 1:
        assert got.tolist() == list(range(k)), "all-zero embeddings: lowest unpicked rows in order"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_duplicates_are_never_drawn_while_others_remain(backend, dtype):
    probs, feats = _inputs(50, 5, 6, dtype, seed=3)
    probs, feats = torch.cat([probs] * 4), torch.cat([feats] * 4)  # rows i, i+50, ... identical
    for seed in range(5):
        got = ops.badge_kmeanspp(probs, feats, 50, generator=torch.Generator().manual_seed(seed), backend=backend)
        assert len(set((got % 50).tolist())) == 50, "a duplicate of an earlier pick was drawn"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_seeds(backend):
    probs, feats = _inputs(500, 10, 16, torch.float64, seed=4)
    a = ops.badge_kmeanspp(probs, feats, 30, generator=torch.Generator().manual_seed(0), backend=backend)
    b = ops.badge_kmeanspp(probs, feats, 30, generator=torch.Generator().manual_seed(0), backend=backend)
    c = ops.badge_kmeanspp(probs, feats, 30, generator=torch.Generator().manual_seed(1), backend=backend)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[0] == c[0]  # the first pick is deterministic: the largest |g|


def test_d2_formula_matches_materialized_embedding():
    probs, feats = _inputs(60, 7, 5, torch.float64, seed=5)
    a = torch.nn.functional.one_hot(probs.argmax(1), 7).double() - probs
    emb = (a[:, :, None] * feats[:, None, :]).flatten(1)
    g = (a * a).sum(1) * (feats * feats).sum(1)
    for c in (0, 17, 59):
        want = ((emb - emb[c]) ** 2).sum(1)
        torch.testing.assert_close(gradient_embedding_sqdist(a, feats, g, c), want, rtol=1e-10, atol=1e-12)


@needs_cpp
def test_noncontiguous_and_bf16():
    probs, feats = _inputs(300, 12, 20, torch.float32, seed=6)
    pt, ft = probs.T.contiguous().T, feats.T.contiguous().T
    assert not pt.is_contiguous() and not ft.is_contiguous()
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    want = ops.badge_kmeanspp(probs, feats, 25, generator=gen(), backend="cpp")
    assert torch.equal(ops.badge_kmeanspp(pt, ft, 25, generator=gen(), backend="cpp"), want)
    got = ops.badge_kmeanspp(probs.bfloat16(), feats.bfloat16(), 25, generator=gen(), backend="cpp")
    assert torch.equal(got, ops.badge_kmeanspp(probs.bfloat16().float(), feats.bfloat16().float(), 25,
                                               generator=gen(), backend="cpp"))


@needs_cpp
def test_opcheck():
    probs, feats = _inputs(80, 4, 6, torch.float32, seed=7)
    torch.library.opcheck(torch.ops.mqnet_fast.badge_kmeanspp.default,
                          (probs, feats, 9, torch.rand(8, dtype=torch.float64)))


BAD = [
    (lambda: ops.badge_kmeanspp(torch.rand(5, 3), torch.randn(4, 2), 2), ValueError, "feats must have 5 rows"),
    (lambda: ops.badge_kmeanspp(torch.rand(5, 3), torch.randn(5, 2), 6), ValueError, r"k \(6\) exceeds the 5 rows"),
    (lambda: ops.badge_kmeanspp(torch.rand(5, 3), torch.randn(5, 2), -1), ValueError, "k must be >= 0"),
    (lambda: ops.badge_kmeanspp(torch.rand(0, 3), torch.randn(0, 2), 0), ValueError, "probs is empty"),
    (lambda: ops.badge_kmeanspp(torch.full((5, 3), float("nan")), torch.randn(5, 2), 1), ValueError, "probs holds 15 NaN"),
    (lambda: ops.badge_kmeanspp(torch.rand(5, 3), torch.randn(5, 2), 2, generator=0),
     TypeError, "generator must be a torch.Generator"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
