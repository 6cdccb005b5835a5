"""BADGE k-means++ seeding, N=50,000, d=512, C=10 and 100, k=1,000.

Baseline: the published BADGE code's way, the N x (C*d) gradient embedding materialized, its row
norms computed once, then one distance pass (a matrix-vector product against the newest center) per
pick. The baseline runs BASELINE_PICKS[C] picks of the k, not all: the materialization (with the
norms) and the picks are timed separately and benchmarks/ops/report.py extrapolates the picks linearly
to k (each pick is the same full pass over the matrix, so its time does not change with the pick).
At C=10 (a 1 GB matrix) that is 100 picks; at C=100 the matrix is 10 GB and a pick takes about half
a second, so 10 picks keep the run near a minute per pool (MQNET_FAST_BADGE_BASELINE_PICKS overrides
both). The norms were once timed with the picks: that one-off pass, about six picks' worth
(benchmarks/ops/badge_baseline_per_pick.py), was then extrapolated as if every pick paid a tenth of it."""
import os

import pytest
import torch

from data import cifar_resnet18, clustered, classifier_probs, gaussian
from mqnet_fast import ops

N, D, K = 50_000, 512, 1_000
BASELINE_PICKS = {10: 100, 100: 10}
if os.environ.get("MQNET_FAST_BADGE_BASELINE_PICKS"):
    BASELINE_PICKS = dict.fromkeys(BASELINE_PICKS, int(os.environ["MQNET_FAST_BADGE_BASELINE_PICKS"]))


def _inputs(kind, classes):
    if kind == "cifar":
        feats, probs = cifar_resnet18()
        return probs, feats
    if kind == "gaussian":
        return torch.softmax(gaussian(N, classes, seed=1), 1), gaussian(N, D)
    feats, labels = clustered(N, D)
    return classifier_probs(feats, labels, classes), feats


PARAMS = [(k, c) for c in (10, 100) for k in ("gaussian", "clustered")]
if cifar_resnet18() is not None:  # real ResNet-18 softmax and features of CIFAR-10: 10 classes only
    PARAMS.append(("cifar", 10))


@pytest.fixture(scope="module", params=PARAMS,
                ids=lambda p: f"{p[0]}-C{p[1]}")
def pool(request):
    kind, classes = request.param
    return kind, classes, *_inputs(kind, classes)


def materialize(probs, feats):
    a = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float() - probs
    return (a[:, :, None] * feats[:, None, :]).flatten(1)


def embedding_norms(emb):
    return torch.cat([(e * e).sum(1) for e in emb.split(2048)])


def materialized_picks(emb, norms, picks, generator):
    """D^2 sampling over the materialized embedding, `picks` picks after the first; one distance pass
    (a matrix-vector product with the precomputed norms, no N x C*d temporary) per pick."""
    c = int(norms.argmax())
    d2 = torch.full((len(emb),), float("inf"))
    for _ in range(picks):
        d2 = torch.minimum(d2, (norms + norms[c] - 2 * torch.mv(emb, emb[c])).clamp_min(0))
        c = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))


def test_badge_cpp(benchmark, pool):
    kind, classes, probs, feats = pool
    benchmark.group = f"badge {kind} C={classes}"
    benchmark.pedantic(lambda: ops.badge_kmeanspp(probs, feats, K, generator=torch.Generator().manual_seed(0),
                                                  backend="cpp"), rounds=2)


def test_badge_materialize_baseline(benchmark, pool):
    kind, classes, probs, feats = pool
    benchmark.group = f"badge {kind} C={classes}"
    benchmark.pedantic(lambda: embedding_norms(materialize(probs, feats)), rounds=1)


def test_badge_picks_baseline(benchmark, pool):
    kind, classes, probs, feats = pool
    benchmark.group = f"badge {kind} C={classes}"
    picks = BASELINE_PICKS[classes]
    benchmark.extra_info["picks"] = picks
    emb = materialize(probs, feats)
    norms = embedding_norms(emb)
    benchmark.pedantic(materialized_picks, args=(emb, norms, picks, torch.Generator().manual_seed(0)), rounds=1)
    del emb
