"""nonneg_mlp_rank_train: the compiled training loop against the eager one (autograd + torch.optim.SGD).

Tolerances, per trained tensor, on max |op - reference| relative to max(1, max |reference|):
float32 5e-6 (measured at most 6e-7 after 100 steps on these problems), float64 1e-13 (measured
at most 1e-15); per-step losses the same as absolute bounds. Fewer steps agree more closely (often
bit for bit)."""
import math

import pytest
import torch

from mqnet_fast import ops, reference
from mqnet_fast.reference.nonneg_mlp_rank_train import ranking_loss, straight_through_scores
from testing import CPU_BACKENDS, cuda, needs_cpp

PARAM_TOL = {torch.float32: 5e-6, torch.float64: 1e-13}
HYPER = dict(momentum=0.9, weight_decay=5e-4, margin=0.1)


def _problem(n, k, hidden, batch, steps, seed, dtype=torch.float32):
    """z ~ N(0, 1); targets with ties: ~40% exact zeros (as OOD examples have) and the rest on a
    grid of quarters; mini-batches drawn as the meta-model training draws them; lr x0.1 from the
    middle; weights partly negative (straight-through), biases of either sign."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=dtype)
    targets = (torch.rand(n, generator=g) * 4).round().to(dtype) / 4
    targets[torch.rand(n, generator=g) < 0.4] = 0.0
    batches = torch.argsort(torch.rand(steps, n, generator=g), dim=1)[:, :batch]
    lr = torch.where(torch.arange(steps) < steps // 2, 0.05, 0.005).to(dtype)
    weights = [(torch.rand(hidden, k, generator=g) - 0.3).to(dtype), (torch.rand(1, hidden, generator=g) - 0.2).to(dtype)]
    biases = [(torch.randn(hidden, generator=g) * 0.5).to(dtype), torch.randn(1, generator=g).to(dtype)]
    return z, targets, batches, lr, weights, biases


def _assert_same_training(got, want, dtype, what=""):
    tol = PARAM_TOL[dtype]
    pairs = list(zip(["W1", "W2"], got.weights, want[0])) + list(zip(["b1", "b2"], got.biases, want[1]))
    for name, g, w in pairs:
        assert g.dtype == w.dtype == dtype and g.shape == w.shape, f"{what} {name}: {g.dtype} {g.shape} vs {w.shape}"
        err = (g - w).abs().max().item()
        scale = max(1.0, w.abs().max().item())
        assert err <= tol * scale, f"{what} {name}: max |op - reference| = {err:.3g} > {tol:g} x {scale:.3g}"
    err = (got.losses - want[2]).abs().max().item() if want[2].numel() else 0.0
    assert err <= tol, f"{what} losses: max |op - reference| = {err:.3g} > {tol:g}"


# (n, k, H, B): B = n and B < n, odd and even; n = 2 and 3 are the smallest query sets.
SHAPES = [(2, 1, 1, 2), (3, 2, 5, 3), (3, 3, 5, 2), (65, 3, 64, 33), (65, 1, 5, 64), (65, 2, 64, 65),
          (500, 2, 64, 64), (500, 2, 64, 500), (500, 1, 1, 63)]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps", [1, 7, 100])
@pytest.mark.parametrize("n,k,hidden,batch", SHAPES)
def test_matches_eager_loop(n, k, hidden, batch, steps, dtype):
    z, targets, batches, lr, weights, biases = _problem(n, k, hidden, batch, steps, seed=n + k + hidden + batch,
                                                        dtype=dtype)
    want = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, **HYPER)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp", **HYPER)
    _assert_same_training(got, want, dtype, f"n={n} k={k} H={hidden} B={batch} steps={steps}")
    moved = max((g - w).abs().max().item() for g, w in zip(got.weights, weights))
    assert moved > 0, "training left the weights unchanged"


@needs_cpp
@pytest.mark.parametrize("momentum,weight_decay,margin", [(0.0, 0.0, 1.0), (0.5, 0.1, 0.0), (0.99, 1e-3, -0.2)])
def test_other_hyperparameters(momentum, weight_decay, margin):
    z, targets, batches, lr, weights, biases = _problem(65, 2, 16, 31, 30, seed=9)
    kwargs = dict(momentum=momentum, weight_decay=weight_decay, margin=margin)
    want = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, **kwargs)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp", **kwargs)
    _assert_same_training(got, want, torch.float32, f"{kwargs}")


def _decay_only(params, lr, momentum, weight_decay, weights=2):
    """SGD with a zero loss gradient, by hand: g = wd p; buf = g, then momentum buf + g; p -= lr buf;
    the first `weights` parameters (the weights) then projected onto >= 0."""
    params = [p.double().clone() for p in params]
    bufs = [None] * len(params)
    for rate in lr.tolist():
        for i, p in enumerate(params):
            g = weight_decay * p
            bufs[i] = g if bufs[i] is None else momentum * bufs[i] + g
            params[i] = p - rate * bufs[i]
            if i < weights:
                params[i] = params[i].clamp_min(0)
    return params


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_equal_targets_no_gradient_but_weight_decay(backend):
    """All targets equal: no pair is ordered, loss 0, and the parameters move by weight decay alone."""
    z, _, batches, lr, weights, biases = _problem(40, 2, 8, 16, 7, seed=1)
    targets = torch.full((40,), 0.75)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, momentum=0.9, weight_decay=0.1,
                                    backend=backend)
    assert torch.equal(got.losses, torch.zeros(7))
    want = _decay_only(weights + biases, lr, 0.9, 0.1)
    for name, g, w in zip(["W1", "W2", "b1", "b2"], got.weights + got.biases, want):
        assert (g.double() - w).abs().max().item() <= 1e-6 * max(1.0, w.abs().max().item()), name


@needs_cpp
def test_one_equal_target_batch_among_others():
    """Step 3's batch holds only OOD examples (target 0): loss 0 for that step, momentum carries on."""
    z, targets, batches, lr, weights, biases = _problem(30, 2, 6, 10, 7, seed=2)
    targets[:10] = 0.0
    batches[3] = torch.arange(10)
    want = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, **HYPER)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp", **HYPER)
    assert want[2][3].item() == 0.0 and got.losses[3].item() == 0.0
    _assert_same_training(got, want, torch.float32, "equal-target step")


@needs_cpp
@pytest.mark.parametrize("negative", ["W1", "W2", "both"])
def test_negative_weights_straight_through(negative):
    """Weights given below 0: relu(W) = 0 in the forward pass, yet W gets the gradient of relu(W)
    (straight through), and the projection after each step puts it at 0 or above, so it can come
    back. With both layers at 0 every score is b2 and every gradient of a weight is 0: they move by
    weight decay's momentum alone (projected)."""
    z, targets, batches, lr, weights, biases = _problem(65, 2, 16, 32, 7, seed=3)
    if negative in ("W1", "both"):
        weights[0] = -weights[0].abs() - 0.1
    if negative in ("W2", "both"):
        weights[1] = -weights[1].abs() - 0.1
    want = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, **HYPER)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp", **HYPER)
    _assert_same_training(got, want, torch.float32, f"negative {negative}")
    decayed = _decay_only(weights, lr, HYPER["momentum"], HYPER["weight_decay"])
    for i, name in enumerate(["W1", "W2"]):
        trained = got.weights[i]
        assert trained.min().item() >= 0, f"{name} left below 0"
        beyond_decay = (trained.double() - decayed[i]).abs().max().item()
        if negative == "both":
            assert beyond_decay < 1e-6, f"{name} moved by {beyond_decay:.3g} beyond weight decay"
        elif negative == name:
            assert beyond_decay > 1e-4, f"{name} got no gradient"
            assert (trained > 0).any(), f"{name} got no gradient: the projection kept it at 0"


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_keeps_weights_from_drifting(dtype):
    """Targets that favour the second input only, so SGD pushes W1's first column down: each step
    ends with W >= 0 (the eager loop, step by step, and the kernel agree), and the column waits at
    0 instead of drifting far below it, as an unprojected straight-through weight would."""
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(64, 2, generator=gen, dtype=dtype)
    targets = (z[:, 1] - z[:, 0]).to(dtype)  # rank up with z_1, down with z_0
    _, _, _, _, weights, biases = _problem(64, 2, 8, 32, 1, seed=9, dtype=dtype)
    batches = torch.argsort(torch.rand(300, 64, generator=gen), dim=1)[:, :32]
    lr = torch.full((300,), 0.05, dtype=dtype)
    kwargs = dict(momentum=0.9, weight_decay=0.0, margin=1.0)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp", **kwargs)
    want = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, **kwargs)
    _assert_same_training(got, want, dtype, "projection")
    assert got.weights[0].min().item() >= 0 and got.weights[1].min().item() >= 0
    assert (got.weights[0][:, 0] == 0).float().mean().item() > 0.5, "z_0's weights did not reach 0"
    assert (got.weights[0][:, 1] > 0).float().mean().item() > 0.5, "z_1's weights were dropped"
    # the same run without the projection (plain SGD on relu(W), straight through) drifts below 0
    w1, b1, w2, b2 = (t.clone().requires_grad_(True) for t in (weights[0], biases[0], weights[1], biases[1]))
    optimizer = torch.optim.SGD([w1, b1, w2, b2], lr=0.05, momentum=0.9)
    for rows in batches:
        loss = ranking_loss(straight_through_scores(z[rows], [w1, w2], [b1, b2]),
                                      targets[rows], 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert w1[:, 0].min().item() < -1.0, "the unprojected weights should drift: the check above tests nothing"


def test_torch_clamp_passes_no_gradient_at_the_boundary():
    """What the kernel copies from the pinned torch (2.14.1): clamp(min=0)'s backward is 0 where the
    input is exactly 0 (strict, like relu). If a torch upgrade changes this, the kernel's `u > 0`
    in csrc/cpu/nonneg_mlp_rank_train.cpp must follow (test_hinge_exactly_at_zero then fails)."""
    x = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    torch.clamp(x, min=0).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hinge_exactly_at_zero(dtype):
    """Hinges exactly at 0 whose gradient would not cancel: margin 0, W1's second column negative
    (relu(W1)[:, 1] = 0, so rows that differ only in z[:, 1] score exactly the same), pairs of such
    rows with different targets. u = 0 - sgn (s_i - s_j) = 0 exactly; as with torch's clamp no gradient
    flows, where an inclusive hinge would send dW1[:, 1] = da (z_i1 - z_j1) != 0 (straight through).
    One hidden unit: with more, the eager loop's matmuls can round the two scores of a pair
    differently (1 ulp, by the rows' positions in the batch) and move its hinge off 0."""
    z = torch.tensor([[0.3, -1.0], [1.2, 0.5], [2.0, 0.0], [0.3, 2.0], [1.2, -0.7], [-2.0, 0.0]], dtype=dtype)
    targets = torch.tensor([1.0, 0.0, 0.0, 2.0, 3.0, 5.0], dtype=dtype)
    _, _, _, _, weights, biases = _problem(6, 2, 1, 6, 1, seed=4, dtype=dtype)
    weights[0] = torch.stack([weights[0][:, 0].abs() + 0.1, -weights[0][:, 1].abs() - 0.1], 1)
    weights[1] = weights[1].abs() + 0.1
    lr = torch.full((10,), 0.1, dtype=dtype)
    # no weight decay: the projection sets W1's second column to 0 after the first step, and decay's
    # momentum would then lift it above 0 and move the hinges off the boundary
    kwargs = dict(momentum=0.9, weight_decay=0.0, margin=0.0)
    # rows 0, 1, 3, 4: pairs (0, 3) and (1, 4), both exactly at the boundary: loss 0, weight decay only
    at_zero = torch.tensor([[0, 1, 3, 4]] * 10)
    want = reference.nonneg_mlp_rank_train(z, targets, at_zero, lr, weights, biases, **kwargs)
    got = ops.nonneg_mlp_rank_train(z, targets, at_zero, lr, weights, biases, backend="cpp", **kwargs)
    assert torch.equal(want[2], torch.zeros(10, dtype=dtype)) and torch.equal(got.losses, torch.zeros(10, dtype=dtype))
    _assert_same_training(got, want, dtype, "hinges at 0")
    decayed = _decay_only(weights + biases, lr, 0.9, 0.0)
    for name, g, w in zip(["W1", "W2", "b1", "b2"], got.weights + got.biases, decayed):
        assert (g.double() - w).abs().max().item() <= PARAM_TOL[dtype], f"{name} moved with no gradient"
    # all six rows: the same two pairs at the boundary and (2, 5), ordered the wrong way (active)
    batches = torch.arange(6).repeat(10, 1)
    want = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, **kwargs)
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp", **kwargs)
    assert got.losses[0].item() > 0
    _assert_same_training(got, want, dtype, "two hinges at 0, one active")


def _by_hand(z, targets, w1, b1, w2, b2, lr, momentum, weight_decay, margin, steps):
    """k = 1, H = 1, two examples (one pair, t_0 > t_1), written out in scalars."""
    sig = lambda a: 1.0 / (1.0 + math.exp(-a))  # noqa: E731
    params = [w1, b1, w2, b2]
    bufs = [None] * 4
    losses = []
    for step in range(steps):
        w1, b1, w2, b2 = params
        h0, h1 = sig(max(w1, 0) * z[0] + b1), sig(max(w1, 0) * z[1] + b1)
        s0, s1 = max(w2, 0) * h0 + b2, max(w2, 0) * h1 + b2
        u = margin - 1.0 * (s0 - s1)  # sign(t_0 - t_1) = +1, one ordered pair
        losses.append(max(u, 0.0))
        ds0, ds1 = (-1.0, 1.0) if u > 0 else (0.0, 0.0)  # d max(u, 0) / d s_0 = -1, / d s_1 = +1
        da0 = ds0 * max(w2, 0) * h0 * (1 - h0)  # sigmoid' = h (1 - h)
        da1 = ds1 * max(w2, 0) * h1 * (1 - h1)
        grads = [da0 * z[0] + da1 * z[1],  # dW1 (straight through: no relu' factor)
                 da0 + da1,                # db1
                 ds0 * h0 + ds1 * h1,      # dW2 (straight through)
                 ds0 + ds1]                # db2
        for i in range(4):
            g = grads[i] + weight_decay * params[i]
            bufs[i] = g if bufs[i] is None else momentum * bufs[i] + g
            params[i] = params[i] - lr[step] * bufs[i]
            if i in (0, 2):  # the weights, projected onto >= 0
                params[i] = max(params[i], 0.0)
    return params, losses


@needs_cpp
@pytest.mark.parametrize("w1", [0.5, -0.5])  # -0.5: relu(W1) = 0, the hidden unit is constant
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_worked(w1, dtype):
    z, targets, b1, w2, b2 = [2.0, -1.0], [1.0, 0.0], 0.25, 1.5, 0.1
    lr, momentum, weight_decay, margin = [0.1, 0.05], 0.9, 0.01, 1.0
    # One step, w1 = 0.5: h0 = sigmoid(0.5 * 2 + 0.25) = 0.777300, h1 = sigmoid(-0.5 + 0.25) = 0.437823,
    # s0 - s1 = 1.5 (h0 - h1) = 0.509215, loss u = 1 - 0.509215 = 0.490785 (one ordered pair, N = 1);
    # ds0 = -1, ds1 = +1: dW2 = -h0 + h1 = -0.339476, db2 = 0,
    # da0 = -1.5 h0 (1 - h0) = -0.259657, da1 = 1.5 h1 (1 - h1) = 0.369201,
    # dW1 = 2 da0 - da1 = -0.888515, db1 = da0 + da1 = 0.109544; then p <- p - 0.1 (dp + 0.01 p):
    # W1 = 0.5 - 0.1 (-0.888515 + 0.005) = 0.588352, b1 = 0.25 - 0.1 (0.109544 + 0.0025) = 0.238796,
    # W2 = 1.5 - 0.1 (-0.339476 + 0.015) = 1.532448, b2 = 0.1 - 0.1 (0 + 0.001) = 0.0999.
    (hand_w1, hand_b1, hand_w2, hand_b2), hand_losses = _by_hand(z, targets, w1, b1, w2, b2, lr, momentum,
                                                                 weight_decay, margin, steps=1)
    if w1 > 0:
        for value, want in [(hand_losses[0], 0.490785), (hand_w1, 0.588352), (hand_b1, 0.238796),
                            (hand_w2, 1.532448), (hand_b2, 0.0999)]:
            assert abs(value - want) < 1e-6, (value, want)
    t = lambda values: torch.tensor(values, dtype=dtype)  # noqa: E731
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for steps in (1, 2):  # the second step also checks the momentum buffer (buf = 0.9 buf + g)
        (hw1, hb1, hw2, hb2), hl = _by_hand(z, targets, w1, b1, w2, b2, lr, momentum, weight_decay, margin, steps)
        got = ops.nonneg_mlp_rank_train(t([[z[0]], [z[1]]]), t(targets), torch.tensor([[0, 1]] * steps),
                                        t(lr[:steps]), [t([[w1]]), t([[w2]])], [t([b1]), t([b2])],
                                        momentum=momentum, weight_decay=weight_decay, margin=margin, backend="cpp")
        for name, value, want in [("W1", got.weights[0], hw1), ("b1", got.biases[0], hb1),
                                  ("W2", got.weights[1], hw2), ("b2", got.biases[1], hb2)]:
            assert abs(value.item() - want) <= tol, f"{steps} step(s), {name}: {value.item()!r} vs {want!r}"
        assert torch.allclose(got.losses.double(), torch.tensor(hl, dtype=torch.float64), rtol=0, atol=tol)


@needs_cpp
def test_inputs_untouched_layouts_and_auto():
    z, targets, batches, lr, weights, biases = _problem(65, 2, 8, 21, 5, seed=5)
    copies = [t.clone() for t in [z, targets, batches, lr, *weights, *biases]]
    got = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp")
    for before, after in zip(copies, [z, targets, batches, lr, *weights, *biases]):
        assert torch.equal(before, after), "an input was modified"
    auto = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases)
    zt = z.T.contiguous().T  # same values, column-major
    strided = ops.nonneg_mlp_rank_train(zt, targets, batches.T.contiguous().T, lr, [weights[0].T.contiguous().T,
                                        weights[1]], biases, backend="cpp")
    for a, b, c in zip(got.weights + got.biases + [got.losses], auto.weights + auto.biases + [auto.losses],
                       strided.weights + strided.biases + [strided.losses]):
        assert torch.equal(a, b) and torch.equal(a, c)
    # no steps: the parameters come back unchanged (as new tensors)
    none = ops.nonneg_mlp_rank_train(z, targets, batches[:0], lr[:0], weights, biases, backend="cpp")
    assert none.losses.shape == (0,) and torch.equal(none.weights[0], weights[0])
    assert none.weights[0].data_ptr() != weights[0].data_ptr()
    # half precision is computed in float32
    half = ops.nonneg_mlp_rank_train(z.bfloat16(), targets, batches, lr, weights, biases, backend="cpp")
    ref = ops.nonneg_mlp_rank_train(z.bfloat16().float(), targets, batches, lr, weights, biases, backend="cpp")
    assert half.weights[0].dtype == torch.float32 and torch.equal(half.weights[0], ref.weights[0])


@needs_cpp
def test_opcheck():
    z, targets, batches, lr, weights, biases = _problem(40, 2, 8, 15, 4, seed=6)
    for dtype in (torch.float32, torch.float64):
        args = (z.to(dtype), targets.to(dtype), batches, lr.to(dtype), weights[0].to(dtype), biases[0].to(dtype),
                weights[1].to(dtype), biases[1].to(dtype), 0.9, 5e-4, 0.1)
        torch.library.opcheck(torch.ops.mqnet_fast.nonneg_mlp_rank_train.default, args)


@cuda
@needs_cpp
def test_cuda_tensors():
    """auto on CUDA tensors: trained on the CPU, results on the GPU; the reference runs on the GPU."""
    z, targets, batches, lr, weights, biases = _problem(65, 2, 16, 32, 20, seed=7)
    cpu = ops.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, backend="cpp")
    args = [t.cuda() for t in (z, targets, batches, lr)] + [[w.cuda() for w in weights], [b.cuda() for b in biases]]
    auto = ops.nonneg_mlp_rank_train(*args)
    assert auto.weights[0].is_cuda and torch.equal(auto.weights[0].cpu(), cpu.weights[0])
    eager = ops.nonneg_mlp_rank_train(*args, backend="torch")
    assert eager.weights[0].is_cuda
    _assert_same_training(cpu, ([w.cpu() for w in eager.weights], [b.cpu() for b in eager.biases],
                                eager.losses.cpu()), torch.float32, "CUDA reference")


Z, T, BT, LR, W, B = _problem(10, 2, 4, 6, 3, seed=8)
_call = ops.nonneg_mlp_rank_train
_raw = torch.ops.mqnet_fast.nonneg_mlp_rank_train
BAD = [
    (lambda: _call(Z[0], T, BT, LR, W, B), ValueError, "z must be 2-D"),
    (lambda: _call(Z.int(), T, BT, LR, W, B), TypeError, "z must be a floating tensor"),
    (lambda: _call(torch.where(Z > 1, float("nan"), Z), T, BT, LR, W, B), ValueError, "z holds .* NaN or Inf"),
    (lambda: _call(Z, T[:9], BT, LR, W, B), ValueError, r"targets must have shape \(10,\)"),
    (lambda: _call(Z, T.long(), BT, LR, W, B), TypeError, "targets must be a floating tensor"),
    (lambda: _call(Z, T / 0, BT, LR, W, B), ValueError, "targets holds .* NaN or Inf"),
    (lambda: _call(Z, T, BT[0], LR, W, B), ValueError, "batches must be a 2-D tensor"),
    (lambda: _call(Z, T, BT.float(), LR, W, B), TypeError, "batches must be an integer tensor"),
    (lambda: _call(Z, T, BT + 5, LR, W, B), IndexError, r"batches holds an index out of range \[0, 10\)"),
    (lambda: _call(Z, T, BT - 1, LR, W, B), IndexError, "batches holds an index out of range"),
    (lambda: _call(Z, T, BT, LR[:2], W, B), ValueError, r"lr must have shape \(3,\)"),
    (lambda: _call(Z, T, BT, -LR, W, B), ValueError, "lr must be >= 0"),
    (lambda: _call(Z, T, BT, LR * float("inf"), W, B), ValueError, "lr holds .* NaN or Inf"),
    (lambda: _call(Z, T, BT, LR, W + [W[1]], B + [B[1]]), ValueError, "trains one hidden layer"),
    (lambda: _call(Z, T, BT, LR, W, B[:1]), ValueError, "trains one hidden layer"),
    (lambda: _call(Z, T, BT, LR, [W[0][:, :1], W[1]], B), ValueError, r"weights\[0\] must have 2 columns"),
    (lambda: _call(Z, T, BT, LR, [W[0], W[1].repeat(2, 1)], B), ValueError, r"weights\[1\] must have 1 rows"),
    (lambda: _call(Z, T, BT, LR, [W[0], W[1][:, :3]], B), ValueError, r"weights\[1\] must have 4 columns"),
    (lambda: _call(Z, T, BT, LR, [W[0] / 0, W[1]], B), ValueError, r"weights\[0\] holds .* NaN or Inf"),
    (lambda: _call(Z, T, BT, LR, W, [B[0][:3], B[1]]), ValueError, r"biases\[0\] must have shape \(4,\)"),
    (lambda: _call(Z, T, BT, LR, W, [B[0], B[1] / 0]), ValueError, r"biases\[1\] holds .* NaN or Inf"),
    (lambda: _call(Z, T, BT, LR, W, B, momentum=-0.1), ValueError, "momentum must be >= 0"),
    (lambda: _call(Z, T, BT, LR, W, B, weight_decay=float("nan")), ValueError, "weight_decay must be a finite"),
    (lambda: _call(Z, T, BT, LR, W, B, margin=float("inf")), ValueError, "margin must be a finite"),
    (lambda: _call(Z, T, BT, LR, W, B, backend="triton"), ValueError, "no 'triton' kernel"),
    (lambda: _call(Z, T, BT, LR, W, B, backend="gpu"), ValueError, "backend must be one of"),
]
# the compiled op's own checks, for callers of torch.ops.mqnet_fast.nonneg_mlp_rank_train
BAD_RAW = [
    (lambda: _raw(Z, T, BT + 5, LR, W[0], B[0], W[1], B[1], 0.9, 0.0, 0.1), r"batches holds an index out of range"),
    (lambda: _raw(Z, T, BT.int(), LR, W[0], B[0], W[1], B[1], 0.9, 0.0, 0.1), "batches must be a 2-D int64"),
    (lambda: _raw(Z, T, BT, LR.double(), W[0], B[0], W[1], B[1], 0.9, 0.0, 0.1), "lr must have z's dtype"),
    (lambda: _raw(Z, T, BT, LR[:1], W[0], B[0], W[1], B[1], 0.9, 0.0, 0.1), r"lr must have shape \(3,\)"),
    (lambda: _raw(Z, T, BT, LR, W[0].T, B[0], W[1], B[1], 0.9, 0.0, 0.1), r"W1 must have shape \(H, 2\)"),
    (lambda: _raw(Z, T, BT, LR, W[0], B[0], W[1].T, B[1], 0.9, 0.0, 0.1), r"W2 must have shape \(1, 4\)"),
    (lambda: _raw(Z, T, BT, LR, W[0], B[0][:2], W[1], B[1], 0.9, 0.0, 0.1), r"b1 must have shape \(4,\)"),
    (lambda: _raw(Z, T[:3], BT, LR, W[0], B[0], W[1], B[1], 0.9, 0.0, 0.1), r"targets must have shape \(10,\)"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@needs_cpp
@pytest.mark.parametrize("call,match", BAD_RAW)
def test_bad_input_compiled_op(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
