"""SIMILAR: FLCMI's lazy greedy and LogDetCMI's incremental greedy against brute-force greedy
maximization of the objectives as the paper writes them; a hand-worked FLCMI case; the gradient
embedding's factored cosine against the materialized embedding, with the private set's label the
predicted or an extra (K + 1)-th class; the strategy contract."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mqnet_fast
from mqnet_fast.strategies import RoundView, make_strategy
from mqnet_fast.strategies.similar import LAZY_BATCH, Factors, embed, flcmi_greedy, logdetcmi_greedy
from testing import CPU_BACKENDS


def _sets(n, q, p, d, seed, two=False):
    g = torch.Generator().manual_seed(seed)
    rows = lambda k, dim: torch.randn(k, dim, generator=g, dtype=torch.float64)  # noqa: E731
    make = lambda k: Factors([rows(k, d)] + ([rows(k, 3)] if two else []))  # noqa: E731
    return make(n), make(q), make(p)


def _flcmi(ground, queries, privates, picked, eta, nu):
    """I(A; Q | P) = sum_i max(min(max_A s_ia, eta max_Q s_iq) - nu max_P s_ip, 0), each maximum over
    the set and 0."""
    def best(keys):
        return ground.sim(keys).amax(1).clamp_min(0) if len(keys) else torch.zeros(len(ground), dtype=torch.float64)
    covered = best(ground.rows(torch.tensor(picked, dtype=torch.long)))
    return float((torch.minimum(covered, eta * best(queries)) - nu * best(privates)).clamp_min(0).sum())


def _logdetcmi(ground, queries, privates, picked, eta, nu, lam):
    """f(A u P) + f(Q u P) - f(A u Q u P) - f(P), f(X) = log det of X's block of the kernel whose
    candidate-Q entries are scaled by eta and candidate-P entries by nu, plus lam I."""
    a = ground.rows(torch.tensor(picked, dtype=torch.long))
    parts = [a, queries, privates]
    kinds = [0] * len(a) + [1] * len(queries) + [2] * len(privates)
    blocks = [[x.sim(y) for y in parts] for x in parts]
    kernel = torch.cat([torch.cat(row, 1) for row in blocks], 0)
    kinds = torch.tensor(kinds)
    scale = torch.ones_like(kernel)
    for other, factor in ((1, eta), (2, nu)):
        cross = (kinds[:, None] == 0) & (kinds[None, :] == other)
        scale[cross | cross.T] = factor
    kernel = kernel * scale + lam * torch.eye(len(kinds), dtype=torch.float64)

    def f(*which):
        mask = torch.isin(kinds, torch.tensor(which))
        return float(torch.linalg.slogdet(kernel[mask][:, mask])[1]) if bool(mask.any()) else 0.0
    return f(0, 2) + f(1, 2) - f(0, 1, 2) - f(2)


def _brute_greedy(objective, n, budget):
    picked = []
    for _ in range(budget):
        base = objective(picked)
        gains = [objective(picked + [j]) - base if j not in picked else -np.inf for j in range(n)]
        picked.append(int(np.argmax(gains)))
    return picked


@pytest.mark.parametrize("seed,two,eta,nu", [(0, False, 1.0, 1.0), (1, True, 1.0, 1.0), (2, False, 2.0, 0.5),
                                             (3, True, 0.7, 0.0), (4, False, 1.0, 1.0)])
def test_flcmi_greedy_is_the_brute_force_greedy(seed, two, eta, nu):
    ground, queries, privates = _sets(40, 4, 3, 5, seed, two)
    if seed == 4:
        privates = privates.rows(slice(0, 0))  # no labeled OOD
    want = _brute_greedy(lambda picked: _flcmi(ground, queries, privates, picked, eta, nu), 40, 8)
    for backend in CPU_BACKENDS:
        picks, gains, evaluated = flcmi_greedy(ground, queries, privates, 8, eta, nu, backend=backend)
        assert picks.tolist() == want, backend
        # each gain is the objective's increase at its step
        values = [_flcmi(ground, queries, privates, want[:k], eta, nu) for k in range(9)]
        np.testing.assert_allclose(gains.numpy(), np.diff(values), rtol=1e-9, atol=1e-12)


def test_flcmi_lazy_evaluates_fewer_gains_and_matches_plain_greedy():
    ground, queries, privates = _sets(800, 30, 20, 16, seed=5)
    picks, _, evaluated = flcmi_greedy(ground, queries, privates, 40, 1.0, 1.0)
    # plain greedy: every gain every step
    from mqnet_fast import reference

    cap, floor = ground.max_sim(queries).clamp_min(0), ground.max_sim(privates).clamp_min(0)
    hi = torch.maximum(cap, floor)
    lo = torch.clamp(torch.zeros_like(cap), min=floor, max=hi)
    plain, available = [], torch.ones(800, dtype=torch.bool)
    for _ in range(40):
        gains = reference.fl_gains(ground.parts[0], ground.parts[0], lo, hi)
        k = int(torch.argmax(torch.where(available, gains, torch.tensor(-1.0, dtype=gains.dtype))))
        plain.append(k)
        available[k] = False
        lo = torch.maximum(lo, torch.minimum(ground.sim(ground.rows(slice(k, k + 1)))[:, 0], hi))
    assert picks.tolist() == plain
    # the first full pass, then at most two batches of stale candidates per pick (plain greedy: 32,000)
    assert evaluated <= 800 + 40 * 2 * LAZY_BATCH, evaluated


def test_flcmi_hand_worked():
    # ground e1, e2, (e1 + e2)/sqrt2; Q = {e1}, P = {e2}
    r = 2 ** -0.5
    ground = Factors([torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)])
    queries = Factors([torch.tensor([[1.0, 0.0]], dtype=torch.float64)])
    privates = Factors([torch.tensor([[0.0, 1.0]], dtype=torch.float64)])
    # nu = 1: rows 1 and 2 are as close to P as their cap allows: only row 0 can gain, e1 gives 1
    picks, gains, _ = flcmi_greedy(ground, queries, privates, 2, 1.0, 1.0)
    assert picks.tolist() == [0, 1] and np.allclose(gains.numpy(), [1.0, 0.0])
    # nu = 0: caps (1, 0, r); e1 covers row 0 (1) and row 2 (r): 1 + r, then e2 and the diagonal gain 0
    picks, gains, _ = flcmi_greedy(ground, queries, privates, 1, 1.0, 0.0)
    assert picks.tolist() == [0] and np.isclose(float(gains[0]), 1 + r)


@pytest.mark.parametrize("seed,two,eta,nu,lam,q,p", [(0, False, 1.0, 1.0, 1.0, 4, 3), (1, True, 1.0, 1.0, 0.5, 3, 2),
                                                    (2, False, 0.5, 0.8, 1.0, 4, 3), (3, False, 1.0, 1.0, 1.0, 3, 0),
                                                    (4, True, 1.0, 1.0, 2.0, 2, 3)])
def test_logdetcmi_greedy_is_the_brute_force_greedy(seed, two, eta, nu, lam, q, p):
    ground, queries, privates = _sets(25, q, p, 4, seed, two)
    want = _brute_greedy(lambda picked: _logdetcmi(ground, queries, privates, picked, eta, nu, lam), 25, 6)
    picks, gains = logdetcmi_greedy(ground, queries, privates, 6, eta, nu, lam)
    assert picks.tolist() == want
    values = [_logdetcmi(ground, queries, privates, want[:k], eta, nu, lam) for k in range(7)]
    np.testing.assert_allclose(gains.numpy(), np.diff(values), rtol=1e-8, atol=1e-10)


def test_logdetcmi_without_queries_is_zero():
    # I(A; {} | P) = f(A u P) + f(P) - f(A u P) - f(P) = 0: every gain 0, the lowest rows
    ground, queries, privates = _sets(25, 0, 3, 4, seed=6)
    picks, gains = logdetcmi_greedy(ground, queries, privates, 4, 1.0, 1.0, 1.0)
    assert picks.tolist() == [0, 1, 2, 3] and gains.abs().max() < 1e-12


def test_gradient_embedding_cosine_is_the_materialized_one():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(30, 4, generator=g, dtype=torch.float64), 1)
    feats = torch.randn(30, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 4, (30,), generator=g)
    factors = embed(probs, feats, labels, "gradients", torch.float64)
    y = torch.where(labels >= 0, labels, probs.argmax(1))
    a = F.one_hot(y, 4).double() - probs
    explicit = torch.cat([(a[:, :, None] * feats[:, None, :]).flatten(1), a], 1)  # (onehot - p) x [h, 1]
    explicit = F.normalize(explicit, dim=1)
    torch.testing.assert_close(factors.sim(factors), explicit @ explicit.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(factors.max_sim(factors.rows(slice(0, 5))), (explicit @ explicit[:5].T).amax(1))


def _extra_class_embedding(probs, feats, labels):
    """The (K + 1)(d + 1)-dim gradient embeddings (onehot(y) - [p, 0]) (x) [h, 1] of a model whose
    (K + 1)-th output has probability 0, y = `labels` (K: that class), unit-normed."""
    p = torch.cat([probs, probs.new_zeros(len(probs), 1)], 1)
    a = F.one_hot(labels, p.shape[1]).double() - p
    h = torch.cat([feats, feats.new_ones(len(feats), 1)], 1)
    return F.normalize((a[:, :, None] * h[:, None, :]).flatten(1), dim=1)


def test_extra_private_class_cosine_is_the_materialized_one():
    g = torch.Generator().manual_seed(1)
    rows = {"ground": 25, "queries": 7, "privates": 6}
    probs = {k: torch.softmax(torch.randn(n, 4, generator=g, dtype=torch.float64) * 2, 1) for k, n in rows.items()}
    feats = {k: torch.randn(n, 5, generator=g, dtype=torch.float64) for k, n in rows.items()}
    labels = {"ground": probs["ground"].argmax(1), "queries": torch.randint(0, 4, (7,), generator=g),
              "privates": torch.full((6,), 4)}
    factors = {k: embed(probs[k], feats[k], None if k == "ground" else labels[k], "gradients", torch.float64,
                        extra_class=True) for k in rows}
    explicit = {k: _extra_class_embedding(probs[k], feats[k], labels[k]) for k in rows}
    assert explicit["privates"][:, -6:].abs().max() > 0.1  # the (K + 1)-th class's block: a = 1 there
    for x, y in itertools.combinations_with_replacement(rows, 2):
        torch.testing.assert_close(factors[x].sim(factors[y]), explicit[x] @ explicit[y].T, rtol=0, atol=1e-12)
    torch.testing.assert_close(factors["ground"].max_sim(factors["privates"]),
                               (explicit["ground"] @ explicit["privates"].T).amax(1))
    # with the predicted IN class the private rows embed otherwise
    predicted = embed(probs["privates"], feats["privates"], None, "gradients", torch.float64)
    assert not torch.allclose(predicted.sim(predicted), explicit["privates"] @ explicit["privates"].T, atol=1e-3)


@pytest.mark.parametrize("function", ["flcmi", "logdetcmi"])
def test_extra_private_label_picks_what_the_materialized_embedding_picks(function):
    """The strategy with smi_private_label="extra" against a brute-force greedy over the hand-built
    (K + 1)(d + 1)-dim embeddings; "predicted" picks otherwise on this case."""
    g = torch.Generator().manual_seed(2)
    n, labeled, k = 30, 12, 3
    probs = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * 2, 1)
    feats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    labeled_probs = torch.softmax(torch.randn(labeled, k, generator=g, dtype=torch.float64) * 2, 1)
    labeled_feats = torch.randn(labeled, 4, generator=g, dtype=torch.float64)
    is_in = torch.arange(labeled) % 2 == 0
    labeled_labels = torch.where(is_in, torch.arange(labeled) % k, torch.full((labeled,), -1))

    def view():
        return RoundView(torch.arange(n), probs, feats, torch.Generator().manual_seed(0), labeled_feats=labeled_feats,
                         labeled_is_in=is_in, labeled_probs=labeled_probs, labeled_labels=labeled_labels)

    ground = Factors([_extra_class_embedding(probs, feats, probs.argmax(1))])
    queries = Factors([_extra_class_embedding(labeled_probs[is_in], labeled_feats[is_in], labeled_labels[is_in])])
    privates = Factors([_extra_class_embedding(labeled_probs[~is_in], labeled_feats[~is_in],
                                               torch.full((int((~is_in).sum()),), k))])
    if function == "flcmi":
        objective = lambda picked: _flcmi(ground, queries, privates, picked, 1.0, 1.0)  # noqa: E731
    else:
        objective = lambda picked: _logdetcmi(ground, queries, privates, picked, 1.0, 1.0, 1.0)  # noqa: E731
    want = _brute_greedy(objective, n, 6)
    options = dict(smi_function=function, smi_embedding="gradients")
    got = make_strategy("similar", smi_private_label="extra", **options).select(view(), 6).indices.tolist()
    assert got == want
    assert make_strategy("similar", smi_private_label="predicted", **options).select(view(), 6).indices.tolist() != want


def _arrays(seed, n=60, labeled=16):
    g = torch.Generator().manual_seed(seed)
    return dict(probs=torch.softmax(torch.randn(n, 3, generator=g), 1), feats=torch.rand(n, 8, generator=g),
                labeled_feats=torch.rand(labeled, 8, generator=g),
                labeled_probs=torch.softmax(torch.randn(labeled, 3, generator=g), 1),
                labeled_is_in=torch.arange(labeled) % 3 != 0)


@pytest.mark.parametrize("function,embedding", list(itertools.product(["flcmi", "logdetcmi"], ["gradients", "features"])))
def test_contract_on_arrays(function, embedding):
    arrays = _arrays(1)
    options = dict(smi_function=function, smi_embedding=embedding)
    a = mqnet_fast.select("similar", 10, options=options, **arrays)
    assert a.indices.shape == (10,) and len(set(a.indices.tolist())) == 10
    assert int(a.indices.min()) >= 0 and int(a.indices.max()) < 60
    b = mqnet_fast.select("similar", 10, options=options, **arrays)
    assert a.indices.tolist() == b.indices.tolist()  # deterministic
    if embedding == "features":
        arrays.pop("labeled_probs")
        mqnet_fast.select("similar", 10, options=options, **arrays)  # not needed for features


def test_missing_inputs_and_options_are_named():
    arrays = _arrays(2)
    arrays.pop("labeled_probs")
    with pytest.raises(ValueError, match="labeled_probs"):
        mqnet_fast.select("similar", 5, **arrays)
    for bad, match in ((dict(smi_function="x"), "smi_function"), (dict(smi_embedding="x"), "smi_embedding"),
                       (dict(smi_lambda=0.0), "smi_lambda"), (dict(smi_eta=-1.0), "smi_eta"),
                       (dict(smi_nu=float("nan")), "smi_nu"),
                       (dict(smi_private_label="ood"), "smi_private_label.*'ood'")):
        with pytest.raises(ValueError, match=match):
            make_strategy("similar", **bad)


def test_no_labeled_in_example_picks_the_lowest_rows():
    arrays = _arrays(3)
    arrays["labeled_is_in"] = torch.zeros(16, dtype=torch.bool)
    picks = mqnet_fast.select("similar", 4, **arrays).indices
    assert picks.tolist() == [0, 1, 2, 3]
