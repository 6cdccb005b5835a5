"""ops.nearest_k against the definition: the k best keys per query by cosine or dot product, best
first, ties to the lower key index, the query's own row left out with exclude_self."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mqnet_fast import ops
from mqnet_fast.finch import first_neighbours
from mqnet_fast.ops import _backends
from testing import CPU_BACKENDS, FLOAT_DTYPES, NEAR_TIE, assert_close, cuda, needs_cpp


def definition(queries, keys, k, metric, exclude_self):
    """The k best by sorting each row's float64 similarities on (-value, key index) with NumPy."""
    q, x = queries.double(), keys.double()
    if metric == "cosine":
        q, x = F.normalize(q, dim=1), F.normalize(x, dim=1)
    sim = (q @ x.T).numpy()
    values, indices = np.empty((len(q), k)), np.empty((len(q), k), np.int64)
    for i, row in enumerate(sim):
        columns = np.arange(len(row))
        if exclude_self:
            columns = columns[columns != i]
        order = columns[np.lexsort((columns, -row[columns]))][:k]
        values[i], indices[i] = row[order], order
    return torch.from_numpy(sim), torch.from_numpy(values), torch.from_numpy(indices)


def check(queries, keys, k, metric, exclude_self, values, indices, dtype):
    """float64: the definition's indices exactly. float32: values close at every rank, and a differing
    index only where its float64 similarity is a near-tie of the definition's at that rank."""
    sim, want_values, want_indices = definition(queries, keys, k, metric, exclude_self)
    assert values.shape == indices.shape == (queries.shape[0], k)
    assert indices.dtype == torch.long
    assert_close(values, want_values, dtype, what=f"{metric} values")
    if dtype == torch.float64:
        assert torch.equal(indices, want_indices)
        return
    for i, c in torch.nonzero(indices != want_indices).tolist():
        got, best = float(sim[i, indices[i, c]]), float(want_values[i, c])
        assert abs(got - best) <= NEAR_TIE[dtype] * max(1.0, abs(best)), (
            f"query {i} rank {c}: key {int(indices[i, c])} ({got}) is not a near-tie of key "
            f"{int(want_indices[i, c])} ({best})")
    if exclude_self:
        assert not (indices == torch.arange(len(queries))[:, None]).any()
    for row in indices:
        assert len(set(row.tolist())) == k  # k distinct keys


# (queries, keys, d, k, exclude_self): tile edges of the C++ kernel (128 queries, 512 keys) and k
# from 1 to every key
CASES = [(1, 1, 1, 1, False), (2, 2, 3, 1, True), (5, 9, 2, 9, False), (129, 513, 7, 3, False),
         (130, 130, 4, 129, True), (300, 1100, 16, 250, False), (700, 700, 3, 2, True), (64, 1025, 33, 1, False)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("n, m, d, k, exclude_self", CASES)
def test_matches_the_definition(backend, dtype, metric, n, m, d, k, exclude_self):
    g = torch.Generator().manual_seed(n + m + d)
    queries = torch.randn(n, d, generator=g, dtype=dtype) * (1 + 3 * torch.rand(n, 1, generator=g, dtype=dtype))
    keys = queries if exclude_self else torch.randn(m, d, generator=g, dtype=dtype)
    values, indices = ops.nearest_k(queries, keys, k, metric=metric, exclude_self=exclude_self, backend=backend)
    assert values.dtype == dtype
    check(queries, keys, k, metric, exclude_self, values, indices, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("k", [1, 20])
def test_exact_ties_go_to_the_lower_key(backend, dtype, exclude_self, k):
    """Small integer rows, many duplicates: every dot product is exact, so every backend and dtype
    gives the definition's order, ties broken to the lower key, across key tiles (600 keys)."""
    g = torch.Generator().manual_seed(7)
    keys = torch.randint(-2, 3, (600, 3), generator=g).to(dtype)
    queries = keys if exclude_self else torch.randint(-2, 3, (40, 3), generator=g).to(dtype)
    _, want_values, want_indices = definition(queries, keys, k, "dot", exclude_self)
    values, indices = ops.nearest_k(queries, keys, k, metric="dot", exclude_self=exclude_self, backend=backend)
    assert torch.equal(indices, want_indices)
    assert torch.equal(values.double(), want_values)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hand_worked(backend):
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    values, indices = ops.nearest_k(x, x, 2, exclude_self=True, backend=backend)
    # row 0's best other row is row 3 (the same direction, cosine 1), then row 1
    assert indices.tolist() == [[3, 1], [0, 3], [1, 0], [0, 1]]
    cos01 = 0.9 / np.hypot(0.9, 0.1)
    assert torch.allclose(values, torch.tensor([[1.0, cos01], [cos01, cos01], [0.1 / np.hypot(0.9, 0.1), 0.0],
                                                [1.0, cos01]], dtype=torch.float64))
    dot_values, dot_indices = ops.nearest_k(x[:2], x, 1, metric="dot", backend=backend)
    assert dot_indices.tolist() == [[3], [3]] and dot_values[:, 0].tolist() == [2.0, 1.8]
    # a row's exact duplicate is its first neighbour, the row itself never is; row 1 ties rows 0 and 2: 0
    dup = torch.tensor([[1.0, 2.0], [5.0, 0.0], [1.0, 2.0]])
    assert ops.nearest_k(dup, dup, 1, exclude_self=True, backend=backend)[1][:, 0].tolist() == [2, 0, 0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(backend, half):
    g = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(50, 8, generator=g).to(half), torch.randn(70, 8, generator=g).to(half)
    got = ops.nearest_k(queries, keys, 5, backend=backend)
    want = ops.nearest_k(queries.float(), keys.float(), 5, backend=backend)
    assert got[0].dtype == torch.float32
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_cpp
def test_cpp_result_does_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(900, 24, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.nearest_k(x, x, 30, exclude_self=True, backend="cpp")
        torch.set_num_threads(max(2, before))
        many = ops.nearest_k(x, x, 30, exclude_self=True, backend="cpp")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


@pytest.mark.parametrize("call, error, message", [
    (lambda x: ops.nearest_k(x, x, 0), ValueError, "k must be >= 1"),
    (lambda x: ops.nearest_k(x, x, 7), ValueError, r"k \(7\) exceeds the 6 keys"),
    (lambda x: ops.nearest_k(x, x, 6, exclude_self=True), ValueError,
     r"k \(6\) exceeds the 5 keys other than the query's own"),
    (lambda x: ops.nearest_k(x, x, 2.0), TypeError, "k must be an int"),
    (lambda x: ops.nearest_k(x[:3], x, 1, exclude_self=True), ValueError, "exclude_self needs the queries to be the keys"),
    (lambda x: ops.nearest_k(x, x, 1, exclude_self=1), TypeError, "exclude_self must be a bool"),
    (lambda x: ops.nearest_k(x, x, 1, metric="l2"), ValueError, "metric must be one of"),
    (lambda x: ops.nearest_k(x, x[:, :2], 1), ValueError, "keys must have 3 columns"),
    (lambda x: ops.nearest_k(x[:0], x, 1), ValueError, "queries is empty"),
    (lambda x: ops.nearest_k(x, x, 1, backend="triton"), ValueError, "nearest_k: there is no 'triton' kernel"),
    (lambda x: ops.nearest_k(x, x, 1, backend="cuda"), ValueError, "nearest_k: there is no 'cuda' kernel"),
    (lambda x: ops.nearest_k(x, x.clone().fill_(float("nan")), 1), ValueError, "keys"),
])
def test_bad_input_is_refused_by_name(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(6, 3))


@needs_cpp
def test_a_build_older_than_the_op_is_named_and_auto_falls_back(monkeypatch):
    x = torch.randn(8, 3)
    want = ops.nearest_k(x, x, 2, backend="torch")
    monkeypatch.setattr(_backends, "has_op", lambda op: False)
    with pytest.raises(ValueError, match="built before this op existed; rebuild"):
        ops.nearest_k(x, x, 2, backend="cpp")
    got = ops.nearest_k(x, x, 2)
    assert torch.equal(got[1], want[1])


def test_first_neighbours_of_finch_are_nearest_k_with_the_row_left_out():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, 5, generator=g)
    _, _, want = definition(x, x, 1, "cosine", True)
    assert first_neighbours(x).tolist() == want[:, 0].tolist()
    assert first_neighbours(x[:1]).tolist() == [0] and first_neighbours(x[:0]).tolist() == []


@cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_on_a_gpu_auto_runs_on_the_device(dtype):
    g = torch.Generator().manual_seed(2)
    queries, keys = torch.randn(300, 16, generator=g, dtype=dtype), torch.randn(900, 16, generator=g, dtype=dtype)
    values, indices = ops.nearest_k(queries.cuda(), keys.cuda(), 40)
    assert values.device.type == indices.device.type == "cuda"
    check(queries, keys, 40, "cosine", False, values.cpu(), indices.cpu(), dtype)
