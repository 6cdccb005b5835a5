"""k-center greedy, N=50,000, d=512, 1,000 labeled, b=1,000.

Baseline: the published CORESET code's way, a chunked cdist init then one torch.cdist against the
new center per pick, timed for BASELINE_PICKS picks (report.py extrapolates to the budget). "read" is one full read of x (x @ v): the per-pick floor when nothing prunes."""
import time

import pytest
import torch

from data import cifar_resnet18, clustered, gaussian
from mqnet_fast import ops

N, D, LABELED, BUDGET, BASELINE_PICKS = 50_000, 512, 1_000, 1_000, 200
DATA = {"gaussian": lambda: gaussian(N, D), "clustered": lambda: clustered(N, D)[0]}
if cifar_resnet18() is not None:  # real ResNet-18 features of CIFAR-10 (benchmarks/ops/cifar_features.py)
    DATA["cifar"] = lambda: cifar_resnet18()[0]


@pytest.fixture(scope="module", params=list(DATA))
def pool(request):
    x = DATA[request.param]()
    labeled = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:LABELED]
    return request.param, x, labeled


def cdist_baseline(x, labeled, budget):
    min_dist = torch.cat([torch.cdist(x[i:i + 5000], x[labeled]).min(1).values for i in range(0, len(x), 5000)])
    min_dist[labeled] = -1  # never picked
    picks = []
    for _ in range(budget):
        c = int(min_dist.argmax())
        picks.append(c)
        min_dist = torch.minimum(min_dist, torch.cdist(x, x[c:c + 1]).squeeze(1))
        min_dist[c] = -1
    return picks


def test_kcenter_cpp(benchmark, pool):
    name, x, labeled = pool
    benchmark.group = f"kcenter {name}"
    benchmark.extra_info.update(per=BUDGET, data=name)
    benchmark.pedantic(ops.kcenter_greedy, args=(x, labeled, BUDGET), kwargs={"backend": "cpp"}, rounds=2)


def test_kcenter_cpp_init_only(benchmark, pool):
    name, x, labeled = pool
    benchmark.group = f"kcenter {name}"
    benchmark.pedantic(ops.kcenter_greedy, args=(x, labeled, 0), kwargs={"backend": "cpp"}, rounds=2)


def test_kcenter_read_of_x(benchmark, pool):
    name, x, _ = pool
    benchmark.group = f"kcenter {name}"
    v = torch.randn(D)
    benchmark.pedantic(torch.mv, args=(x, v), rounds=20, warmup_rounds=2)


def test_kcenter_cdist_baseline(benchmark, pool):
    name, x, labeled = pool
    benchmark.group = f"kcenter {name}"
    start = time.perf_counter()
    cdist_baseline(x, labeled, 0)  # its init alone
    benchmark.extra_info.update(picks=BASELINE_PICKS, init_s=time.perf_counter() - start)
    benchmark.pedantic(cdist_baseline, args=(x, labeled, BASELINE_PICKS), rounds=1)
