import inspect
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mqnet_fast import ops, reference
from testing import CPU_BACKENDS, FLOAT_DTYPES, assert_close, assert_equal_indices, needs_cpp


def _mlp(widths, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o, i, generator=g, dtype=dtype) for i, o in zip(widths[:-1], widths[1:])]
    biases = [torch.randn(o, generator=g, dtype=dtype) for o in widths[1:]]
    return weights, biases


TOL_ATOL = {torch.float32: 2e-6, torch.float64: 1e-13}  # times the output layer's scale
WIDTHS = [(2, 1), (2, 64, 1), (1, 7, 1), (5, 3, 9, 1), (2, 130, 1)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1151])
@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("standardize", [False, True])
def test_matches_reference(backend, dtype, n, widths, standardize):
    weights, biases = _mlp(widths, dtype, seed=n + len(widths))
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, widths[0], generator=g, dtype=dtype) * 4 + 1
    mean = std = None
    if standardize:
        mean, std = z.mean(0), z.std(0, unbiased=False) + 0.5
    got = ops.nonneg_mlp_score(z, weights, biases, mean=mean, std=std, backend=backend)
    want = reference.nonneg_mlp_score(z.double(), [w.double() for w in weights], [b.double() for b in biases],
                                      None if mean is None else mean.double(), None if std is None else std.double())
    assert got.dtype == dtype and got.shape == (n,)
    scale = 1 + sum(w.clamp_min(0).sum().item() for w in weights[-1:]) + biases[-1].abs().item()
    assert_close(got, want, dtype, atol=TOL_ATOL[dtype] * scale, what="scores")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_saturation_and_large_inputs(backend):
    weights, biases = _mlp((2, 64, 1), torch.float32, seed=1)
    z = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [80.0, -80.0], [0.0, 0.0], [-200.0, -200.0], [200.0, 200.0]])
    got = ops.nonneg_mlp_score(z, weights, biases, backend=backend)
    want = reference.nonneg_mlp_score(z.double(), [w.double() for w in weights], [b.double() for b in biases])
    assert_close(got, want, torch.float32, atol=1e-5, what="saturated scores")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_agrees_with_autograd_module(backend):
    """The fused op and an nn.Module trained with the same parametrization give the same scores."""
    torch.manual_seed(0)
    phi = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Sigmoid(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(phi.parameters(), lr=0.1)
    z = torch.rand(256, 2)
    target = z[:, 0] + 2 * z[:, 1]
    for _ in range(20):
        weights, biases = [phi[0].weight, phi[2].weight], [phi[0].bias, phi[2].bias]
        loss = ((reference.nonneg_mlp_score(z, weights, biases) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights, biases = [phi[0].weight, phi[2].weight], [phi[0].bias, phi[2].bias]
    with torch.no_grad():
        module = reference.nonneg_mlp_score(z, weights, biases)
    assert_close(ops.nonneg_mlp_score(z, weights, biases, backend=backend), module, torch.float32, what="fused vs module")


@needs_cpp
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_skyline_property(seed):
    """z_i >= z_j componentwise => Phi(z_i) >= Phi(z_j), for any weights (negative ones included)."""
    weights, biases = _mlp((2, 16, 8, 1), torch.float64, seed=seed)
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(500, 2, generator=g, dtype=torch.float64) * 3
    high = low + torch.rand(500, 2, generator=g, dtype=torch.float64) * torch.randint(0, 2, (500, 2), generator=g)
    s_low = ops.nonneg_mlp_score(low, weights, biases, backend="cpp")
    s_high = ops.nonneg_mlp_score(high, weights, biases, backend="cpp")
    assert torch.all(s_high >= s_low - 1e-12), f"monotonicity broken by {(s_low - s_high).max().item()}"


@needs_cpp
def test_noncontiguous_and_bf16():
    weights, biases = _mlp((2, 64, 1), torch.float32, seed=2)
    z = torch.randn(2, 777).T
    assert not z.is_contiguous()
    assert torch.equal(ops.nonneg_mlp_score(z, weights, biases, backend="cpp"),
                       ops.nonneg_mlp_score(z.contiguous(), weights, biases, backend="cpp"))
    got = ops.nonneg_mlp_score(z.bfloat16(), [w.bfloat16() for w in weights], biases, backend="cpp")
    want = ops.nonneg_mlp_score(z.bfloat16().float(), [w.bfloat16().float() for w in weights], biases, backend="torch")
    assert got.dtype == torch.float32
    assert_close(got, want, torch.float32, atol=1e-5, what="bf16 inputs")


@needs_cpp
def test_opcheck():
    weights, biases = _mlp((2, 64, 1), torch.float32, seed=3)
    torch.library.opcheck(torch.ops.mqnet_fast.nonneg_mlp_score.default,
                          (torch.randn(70, 2), weights, biases, torch.zeros(2), torch.ones(2)))
    torch.library.opcheck(torch.ops.mqnet_fast.nonneg_mlp_score.default,
                          (torch.randn(70, 2), weights, biases, None, None))


def test_top_b_ties_and_order():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, -1.0, 2.0])
    assert ops.top_b(scores, 2).tolist() == [1, 2]
    assert ops.top_b(scores, 4).tolist() == [1, 2, 4, 3]
    assert ops.top_b(scores, 0).tolist() == []
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (1151,), generator=g).float()
    want = sorted(range(1151), key=lambda i: (-scores[i].item(), i))
    assert_equal_indices(ops.top_b(scores, 1151), torch.tensor(want), "full order")
    assert_equal_indices(ops.top_b(scores, 100), torch.tensor(want[:100]), "top 100")


W, B = _mlp((2, 4, 1), torch.float32, seed=0)
BAD = [
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 3), W, B), ValueError, r"weights\[0\] must have 3 columns"),
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 2), W[:1], B[:1]), ValueError, "last layer must have one output"),
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 2), W, B[:1]), ValueError, "same length"),
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 2), [], []), ValueError, "at least one layer"),
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 2), W, B, mean=torch.zeros(2)), ValueError, "given together"),
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 2), W, B, mean=torch.zeros(2), std=torch.tensor([1.0, 0.0])),
     ValueError, "std must be > 0"),
    (lambda: ops.nonneg_mlp_score(torch.randn(5, 2), W, B, mean=torch.zeros(3), std=torch.ones(3)),
     ValueError, r"mean must have shape \(2,\)"),
    (lambda: ops.nonneg_mlp_score(torch.tensor([[float("inf"), 0.0]]), W, B), ValueError, "z holds 1 NaN or Inf"),
    (lambda: ops.top_b(torch.randn(5), 6), ValueError, r"b \(6\) exceeds the 5 scores"),
    (lambda: ops.top_b(torch.randn(5, 1), 1), ValueError, "scores must be a 1-D tensor"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# Every public op against arguments that are not tensors: a list, a NumPy array, None or an int in
# place of each tensor argument must raise a TypeError that names the argument (before, an op whose
# tensors were all of another type raised a bare StopIteration, and others an AttributeError). The
# ops take torch tensors only, NumPy arrays included; only row indices (kcenter_greedy's labeled and
# exclude) also take lists, ranges and arrays.
def _op_calls():
    """op name -> (call taking the arguments by name, valid arguments)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g)
    z = torch.randn(12, 2, generator=g)
    layers = {"weights[0]": torch.rand(4, 2, generator=g), "weights[1]": torch.rand(1, 4, generator=g),
              "biases[0]": torch.rand(4, generator=g), "biases[1]": torch.rand(1, generator=g)}
    exclude = torch.zeros(12, dtype=torch.bool)
    exclude[1:4] = True

    def mlp(a):
        return (a.get("weights", [a["weights[0]"], a["weights[1]"]]),
                a.get("biases", [a["biases[0]"], a["biases[1]"]]))

    return {
        "kcenter_greedy": (lambda a: ops.kcenter_greedy(a["x"], a["labeled"], 3, exclude=a["exclude"]).indices,
                           dict(x=x, labeled=torch.tensor([0, 5]), exclude=exclude)),
        "nearest": (lambda a: ops.nearest(a["queries"], a["keys"]), dict(queries=x, keys=x[:5])),
        "nearest_k": (lambda a: ops.nearest_k(a["queries"], a["keys"], 2), dict(queries=x, keys=x[:5])),
        "badge_kmeanspp": (lambda a: ops.badge_kmeanspp(a["probs"], a["feats"], 3,
                                                        generator=torch.Generator().manual_seed(1)),
                           dict(probs=torch.softmax(torch.randn(12, 4, generator=g), 1), feats=x)),
        "nonneg_mlp_score": (lambda a: ops.nonneg_mlp_score(a["z"], *mlp(a), mean=a["mean"], std=a["std"]),
                             dict(z=z, mean=z.mean(0), std=z.std(0), **layers)),
        "nonneg_mlp_rank_train": (lambda a: ops.nonneg_mlp_rank_train(a["z"], a["targets"], a["batches"], a["lr"],
                                                                      *mlp(a)).losses,
                                  dict(z=z, targets=torch.rand(12, generator=g), batches=torch.arange(12).view(2, 6),
                                       lr=torch.full((2,), 0.1), **layers)),
        "top_b": (lambda a: ops.top_b(a["scores"], 3), dict(scores=z[:, 0])),
        "fl_gains": (lambda a: ops.fl_gains(a["ground"], a["candidates"], a["lo"], a["hi"], ground2=a["ground2"],
                                            candidates2=a["candidates2"]),
                     dict(ground=x, candidates=x[:5], lo=torch.zeros(12), hi=torch.ones(12), ground2=z,
                          candidates2=z[:5])),
    }


OP_CALLS = _op_calls()
INDEX_LIKE = {"labeled", "exclude"}  # row indices: lists, ranges and NumPy arrays are accepted
OPTIONAL = {"mean", "std", "ground2", "candidates2"}  # None is valid (with its partner None too)
LAYER_LISTS = {"weights", "biases"}
NON_TENSORS = {"list": lambda t: t.tolist(), "numpy": lambda t: t.numpy(), "None": lambda t: None,
               "int": lambda t: 3}
TENSOR_CASES = [(op, name, kind) for op, (_, args) in OP_CALLS.items() for name in args
                if name not in INDEX_LIKE for kind in NON_TENSORS if not (kind == "None" and name in OPTIONAL)]


def test_the_table_covers_every_public_op_and_tensor_argument():
    public = {name for name, f in vars(ops).items()
              if inspect.isfunction(f) and f.__module__.startswith(ops.__name__) and not name.startswith("_")}
    assert set(OP_CALLS) == public
    for op, (_, args) in OP_CALLS.items():
        for p in inspect.signature(getattr(ops, op)).parameters.values():
            if "Tensor" in str(p.annotation):  # "torch.Tensor", "Sequence[torch.Tensor]", "... | None"
                assert (f"{p.name}[0]" if "Sequence" in str(p.annotation) else p.name) in args, (op, p.name)


@pytest.mark.parametrize("op, argument, kind", TENSOR_CASES)
def test_non_tensor_argument_is_refused_by_name(op, argument, kind):
    call, args = OP_CALLS[op]
    call(args)  # the valid arguments pass
    bad = dict(args, **{argument: NON_TENSORS[kind](args[argument])})
    with pytest.raises(TypeError, match="^" + re.escape(argument) + r" must be a torch\.Tensor"):
        call(bad)


@pytest.mark.parametrize("kind", ["list", "numpy"])
@pytest.mark.parametrize("op", sorted(OP_CALLS))
def test_no_tensor_at_all_is_refused_by_name(op, kind):
    """Every argument in another form at once (row indices as lists, which they may be): the first
    tensor argument is named (here kcenter_greedy(x.tolist(), [0, 5], ...) raised StopIteration)."""
    call, args = OP_CALLS[op]
    bad = {name: t.tolist() if name in INDEX_LIKE else NON_TENSORS[kind](t) for name, t in args.items()}
    first = next(name for name in args if name not in INDEX_LIKE)
    with pytest.raises(TypeError, match="^" + re.escape(first) + r" must be a torch\.Tensor"):
        call(bad)


@pytest.mark.parametrize("op", ["nonneg_mlp_score", "nonneg_mlp_rank_train"])
@pytest.mark.parametrize("kind", ["None", "int", "tensor", "numpy"])
@pytest.mark.parametrize("argument", sorted(LAYER_LISTS))
def test_layer_list_that_is_not_a_list_is_refused_by_name(op, kind, argument):
    call, args = OP_CALLS[op]
    first = args[f"{argument}[0]"]
    value = {"None": None, "int": 3, "tensor": first, "numpy": first.numpy()}[kind]
    with pytest.raises(TypeError, match=f"^{argument} must be a list or tuple of torch.Tensor"):
        call(dict(args, **{argument: value}))


@pytest.mark.parametrize("argument", sorted(INDEX_LIKE))
def test_row_indices_take_lists_ranges_and_arrays(argument):
    """labeled and exclude as a list, tuple or NumPy array select what the tensor does (an exclude
    mask as a list or array of bools stays a mask: it was once read as the indices 0 and 1)."""
    call, args = OP_CALLS["kcenter_greedy"]
    want = call(args)
    value = args[argument]
    for form in (value.tolist(), tuple(value.tolist()), value.numpy()):
        assert_equal_indices(call(dict(args, **{argument: form})), want, what=f"{argument} as {type(form).__name__}")
    if argument == "labeled":
        assert_equal_indices(call(dict(args, labeled=range(0, 6, 5))), want, what="labeled as a range")
    assert_equal_indices(call(dict(args, **{argument: None})), call(dict(args, **{argument: []})), what="None")
    with pytest.raises(TypeError, match=f"^{argument} must be row indices"):
        call(dict(args, **{argument: 3}))
    with pytest.raises(TypeError, match=f"^{argument} must be an integer tensor, got torch.float"):
        call(dict(args, **{argument: [0.0, 5.0]}))


@pytest.mark.cuda
def test_auto_on_cuda_runs_other_depths_through_the_reference():
    z = torch.randn(300, 2, device="cuda")
    weights, biases = _mlp([2, 8, 8, 1], torch.float32, seed=0)
    weights, biases = [w.cuda() for w in weights], [b.cuda() for b in biases]
    assert torch.equal(ops.nonneg_mlp_score(z, weights, biases),
                       ops.nonneg_mlp_score(z, weights, biases, backend="torch"))


def _cpu_has(isa):
    from mqnet_fast._library import cpu_flags

    flags = cpu_flags() or set()
    return {"avx512": "avx512f" in flags, "avx2": {"avx2", "fma"} <= flags, "generic": True}[isa]


@needs_cpp
@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 255, 256, 257, 1000])
@pytest.mark.parametrize("standardize", [False, True])
def test_each_cpu_path_matches_the_reference(monkeypatch, isa, n, standardize):
    """MQ-Net's shape (2 -> H -> 1, float32) has an AVX-512 and an AVX2 path, chosen at run time from
    the CPU's features (csrc/cpu/isa.h); MQNET_FAST_CPU_ISA caps the choice, so every path this CPU
    has is checked here, with row counts around their 16- and 8-row groups and the 256-row blocks."""
    if not _cpu_has(isa):
        pytest.skip(f"this CPU has no {isa}")
    monkeypatch.setenv("MQNET_FAST_CPU_ISA", isa)
    for hidden in (1, 64, 130):
        weights, biases = _mlp((2, hidden, 1), torch.float32, seed=n + hidden)
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(n)) * 6 + 1
        z[::5] *= 30  # saturated units on both sides
        mean, std = (z.mean(0), z.std(0, unbiased=False) + 0.5) if standardize else (None, None)
        got = ops.nonneg_mlp_score(z, weights, biases, mean=mean, std=std, backend="cpp")
        want = reference.nonneg_mlp_score(z.double(), [w.double() for w in weights], [b.double() for b in biases],
                                          None if mean is None else mean.double(), None if std is None else std.double())
        scale = 1 + weights[-1].clamp_min(0).sum().item() + biases[-1].abs().item()
        assert_close(got, want, torch.float32, atol=TOL_ATOL[torch.float32] * scale, what=f"{isa} scores")


@needs_cpp
def test_an_unknown_cpu_path_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("MQNET_FAST_CPU_ISA", "sse9")
    weights, biases = _mlp((2, 4, 1), torch.float32, seed=0)
    with pytest.raises(RuntimeError, match="MQNET_FAST_CPU_ISA must be avx512, avx2 or generic, got 'sse9'"):
        ops.nonneg_mlp_score(torch.zeros(3, 2), weights, biases, backend="cpp")
