import pytest
import torch
import torch.nn.functional as F

from mqnet_fast import ops, reference
from testing import CPU_BACKENDS, FLOAT_DTYPES, NEAR_TIE, assert_close, assert_equal_indices, needs_cpp
from test_nonneg_mlp_score import OP_CALLS  # every public op with valid arguments


def _check_against_float64(queries, keys, metric, values, indices, dtype):
    """Values close to the float64 definition; a differing index only where the float64 best and the
    picked key are within a float near-tie."""
    want_values, want_indices = reference.nearest(queries.double(), keys.double(), metric)
    assert_close(values, want_values, dtype, what=f"{metric} values")
    q, k = queries.double(), keys.double()
    if metric == "cosine":
        score = lambda i, j: (F.normalize(q[i], dim=0) @ F.normalize(k[j], dim=0)).item()  # noqa: E731
    else:
        score = lambda i, j: -((q[i] - k[j]) ** 2).sum().sqrt().item()  # noqa: E731
    for i in torch.nonzero(indices != want_indices).flatten().tolist():
        best, got = score(i, int(want_indices[i])), score(i, int(indices[i]))
        assert got >= best - NEAR_TIE[dtype] * max(1.0, abs(best)), (
            f"query {i}: key {int(indices[i])} ({got}) is not a near-tie of key {int(want_indices[i])} ({best})")


SHAPES = [(1, 1, 1), (5, 3, 1), (123, 7, 1151), (1151, 129, 123), (257, 64, 513), (600, 16, 1100)]



def check_half_precision(q, k, metric, values, indices, half):
    """What a GPU kernel reading half-precision rows and accumulating in float32 must give (the Triton
    and the CUDA kernels). l2: |q|^2, |k|^2 in float32 and half x half products (exact in float32)
    summed in float32: the float32 definition on the rounded inputs, to float32 accumulation error.
    cosine: the rows are normalized in float32 and stored back in half precision (one more rounding,
    relative u per entry), then the same float32-accumulated dots. To float32 accumulation error the
    values are the float64 dots of those rounded unit rows; and each is within 2u + u^2 (plus that
    accumulation error) of the true cosine of the inputs, since |sum q_i k_i (d_i + e_i + d_i e_i)|
    <= (2u + u^2) |q| |k| for unit rows. Indices must be near-ties of the maximum."""
    values, indices = values.cpu(), indices.cpu()
    if metric == "l2":
        _check_against_float64(q.float(), k.float(), "l2", values, indices, torch.float32)
        return
    rounded_q = F.normalize(q.float(), dim=1).to(half).double()
    rounded_k = F.normalize(k.float(), dim=1).to(half).double()
    dots = rounded_q @ rounded_k.T
    assert_close(values, dots.max(1).values, torch.float32, what=f"{half} cosine values")
    chosen = dots.gather(1, indices[:, None]).squeeze(1)
    assert torch.all(chosen >= dots.max(1).values - NEAR_TIE[torch.float32]), f"{half}: an index is no near-tie"
    u = torch.finfo(half).eps / 2  # unit roundoff
    true_cosine = F.normalize(q.double(), dim=1) @ F.normalize(k.double(), dim=1).T
    bound = 2 * u + u * u + 1e-5
    assert_close(values, true_cosine.max(1).values, rtol=0, atol=bound, what=f"{half} cosine vs the inputs'")
    true_chosen = true_cosine.gather(1, indices[:, None]).squeeze(1)
    assert torch.all(true_chosen >= true_cosine.max(1).values - 2 * bound), f"{half}: an index is not within rounding"

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("n,d,m", SHAPES)
def test_matches_reference(backend, dtype, metric, n, d, m):
    g = torch.Generator().manual_seed(n + 7 * m + d)
    queries = torch.randn(n, d, generator=g, dtype=dtype)
    keys = torch.randn(m, d, generator=g, dtype=dtype)
    values, indices = ops.nearest(queries, keys, metric=metric, backend=backend)
    assert values.dtype == dtype and indices.dtype == torch.long
    _check_against_float64(queries, keys, metric, values, indices, dtype)
    if dtype == torch.float64:
        assert_equal_indices(indices, reference.nearest(queries, keys, metric)[1], "indices")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ties_go_to_lowest_key(backend, metric):
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(-2, 3, (30, 4), generator=g).float()
    keys = torch.cat([keys, keys, keys])  # every key three times: exact ties
    queries = torch.randint(-2, 3, (200, 4), generator=g).float()
    queries[0] = keys[5]
    values, indices = ops.nearest(queries, keys, metric=metric, backend=backend)
    want_values, want_indices = reference.nearest(queries.double(), keys.double(), metric)
    assert_close(values, want_values, torch.float32, what="values")
    if metric == "l2":  # integer data: exact distances, so the lowest tied index is unambiguous
        assert_equal_indices(indices, want_indices, "indices")
        assert torch.all(indices < 30), "a tie went to a later copy of a key"
        assert values[0] == 0 and indices[0] == 5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_vectors_and_large_magnitudes(backend):
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(50, 8, generator=g, dtype=torch.float64) * 1e6
    queries[3] = 0
    keys = torch.randn(70, 8, generator=g, dtype=torch.float64) * 1e-3
    keys[10] = 0
    values, indices = ops.nearest(queries, keys, metric="cosine", backend=backend)
    want = reference.nearest(queries, keys, "cosine")
    assert values[3] == 0
    assert_close(values, want[0], what="cosine values")
    assert_equal_indices(indices, want[1], "cosine indices")
    values, indices = ops.nearest(queries, keys, metric="l2", backend=backend)
    _check_against_float64(queries, keys, "l2", values, indices, torch.float64)


@needs_cpp
def test_noncontiguous_and_bf16():
    g = torch.Generator().manual_seed(2)
    queries = torch.randn(40, 300, generator=g).T  # (300, 40), not contiguous
    keys = torch.randn(99, 80, generator=g)[:, ::2]  # (99, 40), strided
    assert not queries.is_contiguous() and not keys.is_contiguous()
    for metric in ("cosine", "l2"):
        got = ops.nearest(queries, keys, metric=metric, backend="cpp")
        want = ops.nearest(queries.contiguous(), keys.contiguous(), metric=metric, backend="cpp")
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    got = ops.nearest(queries.bfloat16(), keys.bfloat16(), backend="cpp")
    assert got[0].dtype == torch.float32
    _check_against_float64(queries.bfloat16().float(), keys.bfloat16().float(), "cosine", *got, torch.float32)


@needs_cpp
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_opcheck(metric):
    torch.library.opcheck(torch.ops.mqnet_fast.nearest.default, (torch.randn(33, 5), torch.randn(17, 5), metric))


# What torch.compile makes of the ops, as mqnet_fast/ops/__init__.py and the README state it (here on CPU;
# tests/test_triton.py has the Triton ops on a GPU): the registered ops torch.ops.mqnet_fast.* trace
# into one graph through their fake kernels, so they compile with fullgraph=True; the public
# functions in mqnet_fast.ops do not, since each value check (finite values, index ranges, the
# budget against the rows left) reads a tensor on the host: each is a graph break, and without
# fullgraph=True they compile around the breaks and return what eager mode returns.
@needs_cpp
def test_torch_compile():
    fn = torch.compile(lambda q, k: torch.ops.mqnet_fast.nearest(q * 2, k, "l2")[0] + 1, fullgraph=True)
    q, k = torch.randn(64, 8), torch.randn(32, 8)
    assert_close(fn(q, k), ops.nearest(q * 2, k, metric="l2")[0] + 1, what="compiled")


def _registered_op_calls():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(40, 4, generator=g), torch.randn(40, 2, generator=g)
    probs = torch.softmax(torch.randn(40, 3, generator=g), 1)
    w, b = [torch.rand(4, 2, generator=g), torch.rand(1, 4, generator=g)], [torch.rand(4, generator=g), torch.rand(1, generator=g)]
    batches, lr, targets = torch.arange(40).view(4, 10), torch.full((4,), 0.1), torch.rand(40, generator=g)
    return {
        "kcenter_greedy": lambda: torch.ops.mqnet_fast.kcenter_greedy(x, torch.tensor([0]), 5,
                                                                      torch.zeros(40, dtype=torch.bool)),
        "nearest": lambda: torch.ops.mqnet_fast.nearest(x, x[:7], "cosine"),
        "nearest_k": lambda: torch.ops.mqnet_fast.nearest_k(x, x, 3, True),
        "badge_kmeanspp": lambda: torch.ops.mqnet_fast.badge_kmeanspp(probs, x, 5, torch.linspace(0, 0.9, 4).double()),
        "nonneg_mlp_score": lambda: torch.ops.mqnet_fast.nonneg_mlp_score(z, w, b, z.mean(0), z.std(0)),
        "nonneg_mlp_rank_train": lambda: torch.ops.mqnet_fast.nonneg_mlp_rank_train(
            z, targets, batches, lr, w[0], b[0], w[1], b[1], 0.9, 5e-4, 0.1),
        "fl_gains": lambda: torch.ops.mqnet_fast.fl_gains(x, x[:7], targets, targets + 0.5, z, z[:7]),
    }


REGISTERED_OP_CALLS = _registered_op_calls()


def _same(got, want):
    got, want = (got, want) if isinstance(got, (tuple, list)) else ((got,), (want,))
    return len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


@needs_cpp
@pytest.mark.parametrize("op", sorted(REGISTERED_OP_CALLS))
def test_every_registered_op_compiles_with_fullgraph(op):
    """aot_eager: Dynamo's graph capture and AOTAutograd's tracing through the fake kernels, which is
    what decides whether an op compiles; inductor's code generation is what test_torch_compile adds."""
    ops_in_namespace = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                        if name.startswith("mqnet_fast::")}
    assert ops_in_namespace == set(REGISTERED_OP_CALLS)
    torch._dynamo.reset()
    call = REGISTERED_OP_CALLS[op]
    assert _same(torch.compile(call, fullgraph=True, backend="aot_eager")(), call())


@pytest.mark.parametrize("op", sorted(OP_CALLS))
def test_public_ops_break_the_graph_at_their_checks(op):
    call, args = OP_CALLS[op]
    torch._dynamo.reset()
    with pytest.raises((torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)):
        torch.compile(call, fullgraph=True, backend="aot_eager")(args)
    torch._dynamo.reset()
    assert _same(torch.compile(call, backend="aot_eager")(args), call(args))
    assert torch._dynamo.explain(call)(args).graph_break_count >= 1


BAD = [
    (lambda: ops.nearest(torch.randn(4, 3), torch.randn(5, 2)), ValueError, "keys must have 3 columns"),
    (lambda: ops.nearest(torch.randn(4, 3), torch.randn(0, 3)), ValueError, "keys is empty"),
    (lambda: ops.nearest(torch.randn(4), torch.randn(5, 4)), ValueError, "queries must be 2-D"),
    (lambda: ops.nearest(torch.randn(4, 3), torch.full((5, 3), float("inf"))), ValueError, "keys holds 15 NaN or Inf"),
    (lambda: ops.nearest(torch.randn(4, 3), torch.randn(5, 3), metric="dot"), ValueError, "metric must be one of"),
    (lambda: ops.nearest(torch.randn(4, 3), torch.randn(5, 3), backend="cuda"), ValueError, "runs on CUDA tensors|needs mqnet_fast._C built with CUDA"),
    (lambda: ops.nonneg_mlp_score(torch.randn(4, 2), [torch.rand(1, 2)], [torch.rand(1)], backend="cuda"), ValueError, "runs on CUDA tensors|needs mqnet_fast._C built with CUDA"),
    (lambda: ops.nearest(torch.ones(4, 3, dtype=torch.long), torch.randn(5, 3)), TypeError, "queries must be a floating"),
    (lambda: ops.nearest(torch.randn(4, 3), torch.randn(5, 3, device="meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
