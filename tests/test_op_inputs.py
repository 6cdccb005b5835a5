"""Inputs the ops and the array API take as a user gives them: tensors that require grad, NumPy
arrays with negative strides, float32 values up to the type's limit (computed right or refused by
name, never a silent wrong answer), and scores that are not what their name says."""
import pytest
import torch

import mqnet_fast
from mqnet_fast import ops
from testing import CPU_BACKENDS

SCALES = [1.0, 1e3, 1e10, 1e17, 1e18, 3e18, 1e19, 1e25, 1e30, 3e38]


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["auto"] + CPU_BACKENDS)
def test_tensors_that_require_grad_are_read_as_their_values(backend):
    x, q = _rows(40, 5, 0), _rows(7, 5, 1)
    lo, hi = torch.zeros(40), torch.full((40,), float("inf"))
    grad = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    a = ops.kcenter_greedy(grad(x), [0, 3], 6, backend=backend)
    b = ops.kcenter_greedy(x, [0, 3], 6, backend=backend)
    assert torch.equal(a.indices, b.indices) and not a.radii.requires_grad
    for metric in ("cosine", "l2"):
        got, want = ops.nearest(grad(q), grad(x), metric=metric, backend=backend), ops.nearest(q, x, metric=metric,
                                                                                               backend=backend)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert torch.equal(ops.fl_gains(grad(x), grad(q), grad(lo), grad(hi), backend=backend),
                       ops.fl_gains(x, q, lo, hi, backend=backend))
    probs = torch.softmax(_rows(40, 3, 2), 1)
    g = torch.Generator
    assert torch.equal(ops.badge_kmeanspp(grad(probs), grad(x), 4, generator=g().manual_seed(0), backend=backend),
                       ops.badge_kmeanspp(probs, x, 4, generator=g().manual_seed(0), backend=backend))


def test_select_takes_tensors_that_require_grad_and_arrays_with_negative_strides():
    feats, labeled = _rows(30, 4, 0).numpy(), _rows(3, 4, 1).numpy()
    probs = torch.softmax(_rows(30, 3, 2), 1).numpy()
    want = mqnet_fast.select("badge", 5, probs=probs[::-1].copy(), feats=feats[::-1].copy(),
                             generator=torch.Generator().manual_seed(0))
    got = mqnet_fast.select("badge", 5, probs=probs[::-1], feats=feats[::-1],
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(got.indices, want.indices)
    want = mqnet_fast.select("coreset", 5, feats=feats, labeled_feats=labeled)
    got = mqnet_fast.select("coreset", 5, feats=torch.from_numpy(feats).requires_grad_(True),
                            labeled_feats=torch.from_numpy(labeled).requires_grad_(True))
    assert torch.equal(got.indices, want.indices)


def _near_tie(values: torch.Tensor, a: int, b: int) -> bool:
    top = max(abs(float(values[a])), abs(float(values[b])), 1e-300)
    return abs(float(values[a]) - float(values[b])) <= 1e-4 * top


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("backend", ["auto"] + CPU_BACKENDS)
def test_large_float32_values_give_the_float64_answer_or_are_refused_by_name(scale, backend):
    """Up to float32's limit: the float32 picks are the float64 reference's (up to near-ties), or the
    call is refused naming the argument; never inf radii or zero similarities in silence."""
    for seed in range(3):
        x64 = _rows(50, 4, seed).double() * scale
        x = x64.float()
        if not torch.isfinite(x).all():
            continue
        try:
            got = ops.kcenter_greedy(x, [0], 8, backend=backend)
        except ValueError as err:
            assert "x holds values up to" in str(err) and scale >= 3e18
        else:
            want = ops.kcenter_greedy(x.double(), [0], 8, backend="torch")
            assert torch.isfinite(got.radii).all()
            for step, (a, b) in enumerate(zip(got.indices.tolist(), want.indices.tolist())):
                if a != b:  # only where the two were tied in float64
                    assert _near_tie(torch.cdist(x.double(), x.double()[want.indices[:step].tolist() + [0]]).min(1)
                                     .values, a, b), (scale, step, a, b)
                    break
        q = x[:6]
        for metric in ("cosine", "l2"):
            try:
                sims, idx = ops.nearest(q, x[6:], metric=metric, backend=backend)
            except ValueError as err:
                assert str(err).startswith(("queries holds values up to", "keys holds values up to")) and scale >= 3e18
                continue
            ref_sims, ref_idx = ops.nearest(q.double(), x[6:].double(), metric=metric, backend="torch")
            assert torch.isfinite(sims).all()
            for row in range(6):
                if idx[row] != ref_idx[row]:
                    assert abs(float(sims[row]) - float(ref_sims[row])) <= 1e-4 * abs(float(ref_sims[row]))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("two_factors", [False, True])
def test_fl_gains_with_large_float32_values_gives_the_float64_answer_or_is_refused(scale, two_factors):
    """A gain sums n similarities: bounded over all of them, so a float32 gain is never inf where the
    float64 one is finite."""
    for seed in range(2):
        ground, candidates = (_rows(20, 8, seed) * scale).float(), (_rows(6, 8, seed + 10) * scale).float()
        extra = {}
        if two_factors:
            extra = dict(ground2=(_rows(20, 3, seed + 20) * scale).float(),
                         candidates2=(_rows(6, 3, seed + 30) * scale).float())
        if not all(torch.isfinite(t).all() for t in (ground, candidates, *extra.values())):
            continue
        lo, hi = torch.zeros(20), torch.full((20,), float("inf"))
        for backend in ["auto"] + CPU_BACKENDS:
            try:
                got = ops.fl_gains(ground, candidates, lo, hi, backend=backend, **extra)
            except ValueError as err:
                assert "holds values up to" in str(err), err
                continue
            want = ops.fl_gains(ground.double(), candidates.double(), lo.double(), hi, backend="torch",
                                **{k: v.double() for k, v in extra.items()})
            assert torch.isfinite(got).all(), (scale, backend)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-30)


def test_the_issues_overflowing_cases_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="x holds values up to 3e\\+20 in magnitude"):
        ops.kcenter_greedy(torch.tensor([[0.0], [1e20], [3e20]]), [0], 2)
    with pytest.raises(ValueError, match="queries holds values up to 1e\\+20"):
        ops.nearest(torch.tensor([[1e20]]), torch.tensor([[-1e20], [1e20]]))
    with pytest.raises(ValueError, match="ground holds values up to 9e\\+18"):  # 10 terms of 7.2e37 each
        ops.fl_gains(torch.full((10, 1), 9e18), torch.tensor([[8e18], [9e18]]), torch.zeros(10),
                     torch.full((10,), float("inf")))
    # the same values in float64 are computed, and right
    assert ops.kcenter_greedy(torch.tensor([[0.0], [1e20], [3e20]], dtype=torch.float64), [0], 2).indices.tolist() \
        == [2, 1]
    sims, idx = ops.nearest(torch.tensor([[1e20]], dtype=torch.float64), torch.tensor([[-1e20], [1e20]],
                                                                                     dtype=torch.float64))
    assert idx.tolist() == [1] and sims.tolist() == [1.0]


@pytest.mark.parametrize("strategy", ["conf", "entropy", "margin", "badge"])
def test_probabilities_must_be_probabilities(strategy):
    probs = torch.softmax(_rows(20, 3, 0), 1)
    feats = _rows(20, 4, 1)
    with pytest.raises(ValueError, match="probs must be probabilities .* holds -"):
        mqnet_fast.select(strategy, 3, probs=probs - 0.5, feats=feats)
    with pytest.raises(ValueError, match="probs must be probabilities \\(rows summing to 1\\), but row 0 sums to 2"):
        mqnet_fast.select(strategy, 3, probs=probs * 2, feats=feats)
    mqnet_fast.select(strategy, 3, probs=probs, feats=feats)  # a softmax passes


def test_scores_and_losses_are_refused_by_their_own_names():
    with pytest.raises(TypeError, match="scores must be a real-valued \\(floating or integer\\) tensor, got torch.bool"):
        ops.top_b(torch.ones(4, dtype=torch.bool), 2)
    with pytest.raises(TypeError, match="scores must be a real-valued .* got torch.complex64"):
        ops.top_b(torch.ones(4, dtype=torch.complex64), 2)
    assert ops.top_b(torch.tensor([3, 9, 1, 9]), 2).tolist() == [1, 3]  # integer scores rank as before
    probs = torch.softmax(_rows(50, 4, 0), 1)
    with pytest.raises(ValueError, match="purity holds values up to 3e\\+38"):
        mqnet_fast.select("mqnet", 5, purity=torch.full((50,), 3e38), informativeness=torch.rand(50), probs=probs)
    model = mqnet_fast.MQNet(selection="top")
    picks = model.select(5, purity=torch.rand(50), informativeness=torch.rand(50), probs=probs)
    with pytest.raises(ValueError, match="losses must be >= 0"):
        model.observe(picks.indices, losses=torch.tensor([0.1, -1.0, 0.0, 0.2, 0.3]))
