"""Nearest-set similarity, N=50,000 queries, M=5,000 keys, d=128.

Baselines: a bare matmul of the same shape (the floor: the kernel does that GEMM plus a reduction),
and the published code's way, a per-query loop of cosine similarity (timed on 500 queries)."""
import pytest
import torch
import torch.nn.functional as F

from data import clustered
from mqnet_fast import ops

N, M, D, LOOP_QUERIES = 50_000, 5_000, 128, 500


@pytest.fixture(scope="module")
def sets():
    feats, _ = clustered(N + M, D, seed=3)
    return feats[:N].contiguous(), feats[N:].contiguous()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_cpp(benchmark, sets, metric):
    q, k = sets
    benchmark.group = "nearest"
    benchmark.pedantic(ops.nearest, args=(q, k), kwargs={"metric": metric, "backend": "cpp"}, rounds=3)


def test_nearest_bare_matmul(benchmark, sets):
    q, k = sets
    benchmark.group = "nearest"
    benchmark.pedantic(torch.mm, args=(q, k.T), rounds=3)


def test_nearest_per_query_loop(benchmark, sets):
    q, k = sets
    benchmark.group = "nearest"
    benchmark.extra_info["queries"] = LOOP_QUERIES

    def loop():
        for i in range(LOOP_QUERIES):
            F.cosine_similarity(q[i:i + 1], k).max(0)

    benchmark.pedantic(loop, rounds=1)
