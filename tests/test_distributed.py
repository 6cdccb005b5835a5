"""The distributed ops against the single-process ops on the concatenated pool: 2 and 3 gloo processes
on the CPU, shards of unequal size and a shard with no rows."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mqnet_fast import ops

SHARDS = {2: [100, 57], 3: [60, 0, 97]}
N = 157


def _pools():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 13, generator=g, dtype=torch.float64)
    return {
        "gauss64": torch.randn(N, 13, generator=g, dtype=torch.float64),
        "gauss32": torch.randn(N, 13, generator=g),
        "dupes32": torch.cat([base.float(), base.float(), base.float(), base[:7].float()]),  # exact copies
    }


def _cases():
    """(name, pool, labeled, exclude rows, budget) for k-center."""
    pools = _pools()
    labeled = torch.tensor([3, 61, 99, 140])  # in every shard that has rows
    return [("gauss64", pools["gauss64"], labeled, [5, 6, 120], 40), ("gauss32", pools["gauss32"], labeled, [], 60),
            ("dupes32", pools["dupes32"], torch.tensor([30]), [], 70), ("nolabels64", pools["gauss64"],
                                                                         torch.empty(0, dtype=torch.long), [], 12)]


def _badge_inputs(dtype):
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(N, 4, generator=g, dtype=torch.float64) * 3, 1).to(dtype)
    feats = torch.randn(N, 9, generator=g, dtype=torch.float64).to(dtype)
    return probs, feats


def _worker(rank, world, init_file, out_file):
    sys.path.insert(0, os.path.dirname(__file__))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from mqnet_fast import distributed

    sizes = SHARDS[world]
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    results = {}
    for name, pool, labeled, exclude, budget in _cases():
        local_exclude = [i - start for i in exclude if start <= i < start + sizes[rank]]
        res = distributed.kcenter_greedy(pool[rows], labeled, budget, exclude=local_exclude)
        results[f"kcenter/{name}"] = (res.indices, res.radii, res.min_dist)
    for dtype in (torch.float64, torch.float32):
        probs, feats = _badge_inputs(dtype)
        results[f"badge/{dtype}"] = distributed.badge_kmeanspp(probs[rows], feats[rows], 30,
                                                               generator=torch.Generator().manual_seed(5))
    pools = _pools()
    keys = pools["gauss32"][:41]
    key_sizes = [20, 21] if world == 2 else [10, 0, 31]
    key_start = sum(key_sizes[:rank])
    for metric in ("cosine", "l2"):
        results[f"nearest/{metric}"] = distributed.nearest(pools["gauss32"][rows],
                                                           keys[key_start:key_start + key_sizes[rank]], metric=metric)
    scores = torch.round(pools["gauss32"][:, 0] * 4) / 4  # many ties
    results["top_b"] = distributed.top_b(scores[rows], 50)
    for name, pool in (("small", pools["gauss32"]), ("large", torch.cat([pools["gauss32"]] * 8))):
        bounds = [len(pool) * r // world for r in range(world + 1)]
        shard = pool[bounds[rank]:bounds[rank + 1]]
        for picks in (1, 11):
            distributed.bytes_communicated(reset=True)
            distributed.kcenter_greedy(shard, torch.tensor([3]), picks)
            results[f"bytes/kcenter/{name}/{picks}"] = distributed.bytes_communicated()
            distributed.bytes_communicated(reset=True)
            distributed.badge_kmeanspp(shard[:, :4].softmax(1), shard, picks, generator=torch.Generator())
            results[f"bytes/badge/{name}/{picks}"] = distributed.bytes_communicated()
    # the all-zero branch: more picks than distinct rows; an empty first shard; exclude as a mask
    dupes = pools["dupes32"]
    other = [0, 97, 60] if world == 3 else [57, 100]
    o_start = sum(other[:rank])
    o_rows = slice(o_start, o_start + other[rank])
    probs = torch.softmax(dupes[:, :4] * 3, 1)
    results["badge/dupes"] = distributed.badge_kmeanspp(probs[o_rows], dupes[o_rows], 60,
                                                        generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(N, dtype=torch.bool)
    mask[::7] = True
    res = distributed.kcenter_greedy(dupes[o_rows], torch.tensor([1, 120]), 30, exclude=mask[o_rows])
    results["kcenter/mask"] = res.indices
    # a refusal on one rank is a refusal on every rank (nobody is left waiting)
    bad = pools["gauss32"][rows].clone()
    if rank == world - 1:
        bad[-1, 0] = float("nan")
    for name, call in (("nan", lambda: distributed.kcenter_greedy(bad, torch.tensor([3]), 2)),
                       ("generator", lambda: distributed.badge_kmeanspp(probs[o_rows], dupes[o_rows], 3,
                                                                        generator=None))):
        try:
            call()
            results[f"refused/{name}"] = None
        except (TypeError, ValueError) as err:
            results[f"refused/{name}"] = str(err)
    all_results = [None] * world
    dist.all_gather_object(all_results, results)
    if rank == 0:
        torch.save(all_results, out_file)
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 3])
def per_rank(request, tmp_path_factory):
    world = request.param
    folder = tmp_path_factory.mktemp(f"dist{world}")
    mp.spawn(_worker, args=(world, str(folder / "init"), str(folder / "out.pt")), nprocs=world, join=True)
    return world, torch.load(folder / "out.pt", weights_only=False)


def test_kcenter_equals_the_single_process_picks(per_rank):
    world, results = per_rank
    for name, pool, labeled, exclude, budget in _cases():
        mask = torch.zeros(N, dtype=torch.bool)
        mask[exclude] = True
        expected = ops.kcenter_greedy(pool, labeled, budget, exclude=mask, backend="torch")
        for rank in range(world):
            indices, radii, _ = results[rank][f"kcenter/{name}"]
            assert torch.equal(indices, expected.indices), (name, rank)
            assert torch.equal(radii, expected.radii), (name, rank)
        min_dist = torch.cat([results[rank][f"kcenter/{name}"][2] for rank in range(world)])
        assert torch.equal(min_dist, expected.min_dist), name
        if pool.dtype == torch.float64 or name == "dupes32":  # the compiled kernel's picks: bit-for-bit here
            assert torch.equal(ops.kcenter_greedy(pool, labeled, budget, exclude=mask).indices, expected.indices)


def test_badge_equals_the_single_process_picks(per_rank):
    world, results = per_rank
    for dtype in (torch.float64, torch.float32):
        probs, feats = _badge_inputs(dtype)
        expected = ops.badge_kmeanspp(probs, feats, 30, generator=torch.Generator().manual_seed(5), backend="torch")
        for rank in range(world):
            assert torch.equal(results[rank][f"badge/{dtype}"], expected), (dtype, rank)


def test_nearest_and_top_b_equal_the_single_process_results(per_rank):
    world, results = per_rank
    pools = _pools()
    for metric in ("cosine", "l2"):
        values = torch.cat([results[r][f"nearest/{metric}"][0] for r in range(world)])
        indices = torch.cat([results[r][f"nearest/{metric}"][1] for r in range(world)])
        want_values, want_indices = ops.nearest(pools["gauss32"], pools["gauss32"][:41], metric=metric)
        assert torch.equal(indices, want_indices), metric
        torch.testing.assert_close(values, want_values, rtol=2e-6, atol=1e-6)
    scores = torch.round(pools["gauss32"][:, 0] * 4) / 4
    for rank in range(world):
        assert torch.equal(results[rank]["top_b"], ops.top_b(scores, 50))


def test_bytes_per_pick_do_not_grow_with_the_pool(per_rank):
    world, results = per_rank
    d, e = 13, 4
    # per pick, on every rank, sent + received, with flat collectives (bytes_communicated):
    # k-center (float32): the packed 8-byte max all-reduce (2 (W - 1) / W x 8 each way), the winner's
    # row (root: to each other rank; others: once); BADGE: the chained running sum (8 bytes in, 8
    # out), the total broadcast, the min all-reduce of the row, the (a, h, G) broadcast.
    # A broadcast's root sends (W - 1) S and the others receive S, so a rank's share depends on which
    # ranks own the winners; the sum over the ranks does not, and neither does it depend on N.
    for op in ("kcenter", "badge"):
        per_pick = {}
        for size in ("small", "large"):
            total = 0
            for rank in range(world):
                ten, one = results[rank][f"bytes/{op}/{size}/11"], results[rank][f"bytes/{op}/{size}/1"]
                total += ten["sent"] + ten["received"] - one["sent"] - one["received"]
            per_pick[size] = total / 10
        assert per_pick["small"] == per_pick["large"], (op, per_pick)  # 8x the pool, the same bytes
        if op == "kcenter":  # float32: the packed 8-byte max all-reduce; the row: (W - 1) S sent and received
            # (a rank's all-reduce share, 2 (W - 1) / W x 8 bytes, is fractional: counts are rounded per rank)
            assert abs(per_pick["small"] - (32 * (world - 1) + 2 * (world - 1) * d * e)) < 1, per_pick
    # one process moves nothing: checked by the formulas' (W - 1) factors above at W = 2, 3


def test_all_zero_branch_masks_and_an_empty_first_shard(per_rank):
    world, results = per_rank
    dupes = _pools()["dupes32"]
    probs = torch.softmax(dupes[:, :4] * 3, 1)
    expected = ops.badge_kmeanspp(probs, dupes, 60, generator=torch.Generator().manual_seed(2), backend="torch")
    mask = torch.zeros(N, dtype=torch.bool)
    mask[::7] = True
    expected_k = ops.kcenter_greedy(dupes, torch.tensor([1, 120]), 30, exclude=mask, backend="torch")
    for rank in range(world):
        assert torch.equal(results[rank]["badge/dupes"], expected)
        assert torch.equal(results[rank]["kcenter/mask"], expected_k.indices)


def test_a_refusal_on_one_rank_is_a_refusal_on_all(per_rank):
    world, results = per_rank
    for rank in range(world):
        nan = results[rank]["refused/nan"]
        assert nan is not None and ("NaN" in nan if rank == world - 1 else f"rank {world - 1} refused" in nan)
        assert "generator must be a CPU torch.Generator" in results[rank]["refused/generator"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d", [(1, 3), (157, 13), (4096, 5), (9000, 130)])
def test_chunked_distances_are_the_reference_expression_bit_for_bit(n, d, dtype):
    from mqnet_fast.ops.kcenter_greedy import _Distances
    from mqnet_fast.reference.kcenter_greedy import squared_distances

    g = torch.Generator().manual_seed(n)
    x, center = torch.randn(n, d, generator=g, dtype=dtype), torch.randn(d, generator=g, dtype=dtype)
    assert torch.equal(_Distances(x)(center), squared_distances(x, center))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 157, 9000])
def test_chunked_gradient_distances_are_the_reference_expression_bit_for_bit(n, dtype):
    from mqnet_fast.ops.badge_kmeanspp import _GradientDistances
    from mqnet_fast.reference.badge_kmeanspp import gradient_factors, sqdist_to

    g = torch.Generator().manual_seed(n)
    probs = torch.softmax(torch.randn(n, 6, generator=g, dtype=dtype), 1)
    feats = torch.randn(n, 70, generator=g, dtype=dtype)
    a, norms = gradient_factors(probs, feats)
    c = n // 2
    assert torch.equal(_GradientDistances(a, feats, norms)(a[c], feats[c], norms[c]),
                       sqdist_to(a, feats, norms, a[c], feats[c], norms[c]))
