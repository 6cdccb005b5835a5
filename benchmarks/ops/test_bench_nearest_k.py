"""The k best keys per query, at the three shapes the strategies ask for: EAOA's 250 neighbours
(2,000 labeled rows against a 45,000-candidate pool, float32), FINCH's first neighbour within 10,000
rows (float64, the row itself left out) and CCAL's two closest of 500 labeled examples for 40,000
candidates (float64); d = 128.

Baseline: what the strategies ran before the op, the op's "torch" backend: blocks of rows against
every key (a matmul), then a stable sort of each row (ties to the lower key), or for k = 1 (FINCH)
the row's first maximum."""
import pytest
import torch

from data import clustered
from mqnet_fast import ops

SHAPES = {"eaoa-250": (2_000, 45_000, 250, False, torch.float32),
          "finch-1": (10_000, 10_000, 1, True, torch.float64),
          "ccal-2": (40_000, 500, 2, False, torch.float64)}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def case(request):
    n, m, k, exclude_self, dtype = SHAPES[request.param]
    feats, _ = clustered(n + m, 128, seed=5)
    feats = feats.to(dtype)
    queries = feats[:n].contiguous()
    keys = queries if exclude_self else feats[n:].contiguous()
    return request.param, queries, keys, k, exclude_self


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_nearest_k(benchmark, case, backend):
    name, queries, keys, k, exclude_self = case
    benchmark.group = f"nearest_k {name}"
    benchmark.pedantic(ops.nearest_k, args=(queries, keys, k), kwargs={"exclude_self": exclude_self,
                                                                       "backend": backend}, rounds=3)
