import pytest
import torch

from mqnet_fast import ops, reference
from mqnet_fast.reference.badge_kmeanspp import gradient_embedding_sqdist
from testing import CPU_BACKENDS, FLOAT_DTYPES, assert_equal_indices, needs_cpp


def _inputs(n, c, d, dtype, seed, temperature=3.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * temperature, 1).to(dtype)
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    return probs, feats


def _verify_near_ties(probs, feats, picks, ref_picks, seed, dtype):
    """Every pick, not only the first that leaves the reference: the float64 definition is replayed
    from the op's own earlier picks (its D^2 to them, the same uniforms), and each pick must be the
    row that definition takes from there, or else a near-tie of it: for the first pick a |g| within
    rounding of the largest, for a later one a row whose float64 cumulative-D^2 interval reaches the
    drawn target to within the rounding of the op's D^2 (when every D^2 is within rounding of 0, as
    with duplicate rows, that is any unpicked row). ref_picks (the reference's own run) only names
    where it and the op part, in the message.

    Rounding of a D^2 computed in `dtype`: G_i + G_c - 2 (a_i.a_c)(h_i.h_c) with C- and d-term dots
    is within gamma (G_i + G_c + 2 |a_i||a_c||h_i||h_c|) = gamma (sqrt(G_i) + sqrt(G_c))^2 of the exact
    value, gamma = (C + d + 4) eps (the standard bound for sums of products), c the row's nearest pick;
    the op's running sums can then be off by at most the sum of those over all rows."""
    n, n_classes = probs.shape
    gamma = (n_classes + feats.shape[1] + 4) * torch.finfo(dtype).eps
    p64, h64 = probs.double(), feats.double()
    a = torch.nn.functional.one_hot(p64.argmax(1), n_classes).double() - p64
    g = (a * a).sum(1) * (h64 * h64).sum(1)
    uniforms = torch.rand(max(len(picks) - 1, 0), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d2 = torch.full_like(g, float("inf"))
    nearest = torch.zeros(n, dtype=torch.long)
    picked = torch.zeros(n, dtype=torch.bool)
    parted = torch.nonzero(picks.cpu() != ref_picks.cpu()).flatten()
    where = f" (the op and the reference part at pick {int(parted[0])})" if parted.numel() else ""
    for s, p in enumerate(picks.tolist()):
        assert not picked[p], f"pick {s} (row {p}) was picked before"
        if s == 0:
            assert g[p] >= g.max() * (1 - 2 * gamma), f"first pick (row {p}) is not a near-maximal |g|{where}"
        else:
            cum = torch.cumsum(d2, 0)
            total = cum[-1]
            if total > 0:
                want = int(torch.searchsorted(cum, uniforms[s - 1] * total, right=True))
                want = want if want < n else int(torch.nonzero(d2 > 0)[-1])
            else:
                want = int(torch.nonzero(~picked)[0])
            if p != want:
                target = uniforms[s - 1] * total
                low = cum[p - 1] if p > 0 else cum.new_zeros(())
                slack = gamma * ((g.sqrt() + g[nearest].sqrt()) ** 2).sum()
                assert low - slack <= target <= cum[p] + slack, (
                    f"pick {s} (row {p}) is neither row {want}, the float64 draw from the op's own earlier picks, "
                    f"nor a near-tie of it: target {float(target):.9g}, row {p} covers "
                    f"[{float(low):.9g}, {float(cum[p]):.9g}], slack {float(slack):.3g}{where}")
        picked[p] = True
        dist = gradient_embedding_sqdist(a, h64, g, p)
        nearest = torch.where(dist < d2, p, nearest)
        d2 = torch.minimum(d2, dist)
        d2[p] = 0


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


def test_every_pick_is_checked_not_only_the_first_difference():
    """_verify_near_ties replays every pick: a first pick that is a tie (a copy of the row with the
    largest |g|) leaves the later picks checked, so a sequence that goes on correctly passes and one
    whose later picks are reordered fails (the check once stopped at the first pick that differed)."""
    probs, feats = _inputs(200, 5, 6, torch.float64, seed=8)
    a = torch.nn.functional.one_hot(probs.argmax(1), 5).double() - probs
    top = int(((a * a).sum(1) * (feats * feats).sum(1)).argmax())
    probs[199], feats[199] = probs[top], feats[top]
    uniforms = torch.rand(19, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = reference.badge_kmeanspp(probs, feats, 20, uniforms)
    assert ref[0] == top and 199 not in ref.tolist()
    tied = torch.cat([torch.tensor([199]), ref[1:]])  # the copy first: the same D^2 state from there on
    _verify_near_ties(probs, feats, tied, ref, 0, torch.float64)
    reordered = torch.cat([tied[:10], tied[10:].flip(0)])
    with pytest.raises(AssertionError, match="pick 10 .* is neither row"):
        _verify_near_ties(probs, feats, reordered, ref, 0, torch.float64)


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
