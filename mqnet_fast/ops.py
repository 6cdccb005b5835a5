"""The public ops: one function per hot path, each dispatching to a backend.

backend: "torch" (the reference in mqnet_fast.reference, any device), "cpp" (the compiled CPU
kernel), "triton" (the Triton kernels in mqnet_fast.kernels: CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), "cuda" (the CUDA-source kernels in csrc/cuda, compiled into _C), or "auto",
which takes (_resolve_backend):

- on CPU tensors "cpp" when _C is built, else "torch";
- on CUDA tensors "triton" when triton imports, except for float64 input to nearest, badge_kmeanspp,
  nonneg_mlp_score and fl_gains (their Triton kernels compute in float32), which "torch" computes
  (kcenter_greedy's Triton kernel takes float64); without triton, "torch". "auto" never takes the
  "cuda" kernels: they run only when asked for by name. nonneg_mlp_score with other than one hidden
  layer goes to "torch" (the Triton kernel, asked for by name, refuses it);
- on any other device "torch";
- fl_gains has no "cuda" kernel (asked for by name it is refused);
- nonneg_mlp_rank_train has only "torch" and "cpp": its "auto" is "cpp" whenever _C is built, CUDA
  tensors included (copied to the CPU and back), else "torch".

Half-precision inputs (bfloat16, float16) are computed in float32. The references and the C++
kernels widen them first. The Triton kernels read them as stored (half the bytes) and compute in
float32, where the product of two half-precision values is exact: BADGE (its features; the
probabilities are passed in float32) and nearest's l2 path compute the float32 definition on the
rounded inputs, to float32 accumulation error; the MLP is passed float32. nearest's cosine path
rounds once more: it normalizes the rows in float32 and stores the unit rows back in the input's
half precision before the dots, so each entry moves by up to u relative (u = 2^-8 for bfloat16,
2^-11 for float16) and a value by up to 2u + u^2 (0.0078, 0.00098) from the float32 cosine of the
inputs, plus the float32 accumulation error (tests/test_triton.py checks both bounds).

torch.compile: the registered ops torch.ops.mqnet_fast.* (the C++ kernels, with fake kernels for
tracing; their own checks run inside the kernel) compile with fullgraph=True. The functions here do
not: each value check reads a tensor on the host (finite values, in every op; kcenter_greedy's
index ranges and budget; nonneg_mlp_score's std > 0, or the Triton kernel's flags word;
nonneg_mlp_rank_train's index ranges and lr >= 0), and each read is a graph break. Without
fullgraph=True they compile around the breaks and return what eager mode returns
(tests/test_nearest.py, on CPU). On CUDA the same holds for the Triton backend, whose registered ops
torch.ops.mqnet_fast_triton.nearest, .nonneg_mlp_score and .badge_kmeanspp compile whole
(tests/test_triton.py, GPU only).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import torch

from mqnet_fast import _checks as checks
from mqnet_fast import _triton
from mqnet_fast import _fake  # noqa: F401  (fake kernels for torch.compile)
from mqnet_fast import reference
from mqnet_fast._library import compiled_backends, has_compiled, require_compiled

BACKENDS = ("auto", "torch", "cpp", "cuda", "triton")
# "auto" on CUDA tensors takes the Triton kernel for every op: it was faster than the CUDA kernel for
# all four at issue 4's sizes on an H100 (benchmarks/results/gpu/h100/run2-gpu-bench.md: k-center 0.37 vs
# 1.06 s, nearest 27 vs 416 ms, BADGE 0.24 vs 0.71 s, MLP op 0.19 vs 0.59 ms) and, with the previous
# Triton kernels, on an H200 (benchmarks/results/gpu/gpu-bench.md). Smaller sizes were not measured.


def _resolve_backend(op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs `op` on `device`; `dtype` is the input's dtype (the Triton kernels of
    nearest, badge_kmeanspp and nonneg_mlp_score compute in float32 and refuse float64)."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    triton_refuses_dtype = dtype == torch.float64 and op != "kcenter_greedy"
    if backend == "auto":
        if device.type == "cpu":
            return "cpp" if has_compiled() else "torch"
        if device.type == "cuda" and not triton_refuses_dtype and _triton.unavailable_reason(device) is None:
            return "triton"
        return "torch"
    if backend == "cpp":
        require_compiled(op)
        if device.type != "cpu":
            raise ValueError(f"{op}: backend 'cpp' runs on CPU tensors, got tensors on {device}")
    if backend == "triton":
        reason = _triton.unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"{op}: backend 'triton' cannot run here: {reason}")
        if triton_refuses_dtype:
            raise ValueError(f"{op}: backend 'triton' computes in float32 (half-precision storage allowed), "
                             "got float64 input; use backend='torch' for float64")
    if backend == "cuda":
        if "cuda" not in compiled_backends():
            raise ValueError(f"{op}: backend 'cuda' needs mqnet_fast._C built with CUDA (found backends "
                             f"{compiled_backends()}); rebuild where a CUDA toolkit is found, on a machine with a visible GPU or with "
                             "MQNET_FAST_WITH_CUDA=1 (pip install --no-build-isolation --no-deps -e .)")
        if device.type != "cuda":
            raise ValueError(f"{op}: backend 'cuda' runs on CUDA tensors, got tensors on {device}")
        if op in ("badge_kmeanspp", "nearest") and dtype == torch.float64:
            raise ValueError(f"{op}: backend 'cuda' computes in float32 (half-precision storage allowed), "
                             "got float64 input; use backend='torch' for float64")
    return backend


def _storage_dtype(t: torch.Tensor) -> torch.dtype:
    """What the Triton kernels read: half precision as given, everything else in the compute dtype."""
    return t.dtype if t.dtype in (torch.bfloat16, torch.float16) else checks.compute_dtype(t)


class KCenterResult(NamedTuple):
    indices: torch.Tensor   #: (budget,) int64, the picks in pick order
    radii: torch.Tensor     #: (budget,) covering radius just before each pick (its distance to the centers)
    min_dist: torch.Tensor  #: (N,) final distance of every row to its nearest center


def kcenter_greedy(x: torch.Tensor, labeled, budget: int, *, exclude=None,
                   backend: str = "auto") -> KCenterResult:
    """k-center greedy (CORESET's farthest-first traversal) in Euclidean distance.

    Args:
        x: (N, d) float embeddings (float32/float64; half precision is computed in float32).
        labeled: (L,) int indices of the rows already labeled (initial centers), as a tensor, list,
            range or NumPy array; may be empty or None.
        budget: number of rows to pick, at most the rows neither labeled nor excluded.
        exclude: rows never picked, as indices or an (N,) bool mask, in any of labeled's forms (their
            distances are still tracked).

    Math: picks one at a time the eligible row i maximizing min_{c in centers} |x_i - x_c|, which then
    becomes a center; ties go to the lowest index (so with all remaining radii 0, as with duplicate
    rows, the lowest remaining row; with no center at all, the lowest eligible row, radius inf).

    Returns: KCenterResult(indices (budget,) int64, radii (budget,), min_dist (N,)), radii and min_dist
    in the compute dtype.

    The compiled kernel uses O(N) memory beyond x and skips, by the triangle inequality, the rows a
    new center cannot improve (exact; see csrc/cpu/kcenter_greedy.cpp).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [5.0], [2.0]])
        >>> kcenter_greedy(x, [0], 2).indices
        tensor([2, 3])
    """
    checks.tensors(x=x)
    device = checks.same_device(x=x, labeled=labeled, exclude=exclude)
    checks.copy_memory("x", x, checks.compute_dtype(x))  # before reading the values: an expanded x is cheap to hold
    x = checks.matrix("x", x, products=1)
    n = x.shape[0]
    labeled = checks.indices("labeled", labeled, n, device)
    excluded = checks.row_mask("exclude", exclude, n, device)
    blocked = excluded.clone()
    blocked[labeled] = True
    available = n - int(blocked.sum())
    budget = checks.count("budget", budget, high=available,
                          what=f"the {available} rows that are neither labeled nor excluded")
    chosen = _resolve_backend("kcenter_greedy", backend, device, checks.compute_dtype(x))
    if chosen == "triton":
        return KCenterResult(*_triton.kernel_module("kcenter_greedy").kcenter_greedy(
            x.to(_storage_dtype(x)), labeled, budget, excluded))
    if chosen == "cuda":
        return KCenterResult(*torch.ops.mqnet_fast.kcenter_greedy(x.to(_storage_dtype(x)), labeled, budget, excluded))
    x = x.to(checks.compute_dtype(x))
    if chosen == "torch":
        return KCenterResult(*reference.kcenter_greedy(x, labeled, budget, excluded))
    return KCenterResult(*torch.ops.mqnet_fast.kcenter_greedy(x, labeled, budget, excluded))


METRICS = ("cosine", "l2")


def nearest(queries: torch.Tensor, keys: torch.Tensor, *, metric: str = "cosine",
            backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-set similarity: the best key for every query (purity scores, CSI/CCAL-style).

    Args:
        queries: (N, d) float; keys: (M, d) float, M >= 1 (same dtype after promotion to float32/64).
        metric: "cosine": values[i] = max_j cos(q_i, k_j) (norms clamped at 1e-12);
                "l2": values[i] = min_j |q_i - k_j| (computed as |q|^2 + |k|^2 - 2 q.k, clamped at 0).

    Returns: (values (N,) in the compute dtype, indices (N,) int64), ties to the lowest key index.
    The compiled kernel reduces GEMM tiles in cache and never forms the (N, M) matrix.

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); k = torch.tensor([[0.0, 1.0], [3.0, 0.1]])
        >>> nearest(q, k)[1]
        tensor([1, 0])
    """
    checks.tensors(queries=queries, keys=keys)
    device = checks.same_device(queries=queries, keys=keys)
    checks.copy_memory("queries and keys", queries, checks.compute_dtype(queries), keys)
    queries = checks.matrix("queries", queries, products=1)
    keys = checks.matrix("keys", keys, cols=queries.shape[1], products=1)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    dtype = torch.promote_types(checks.compute_dtype(queries), checks.compute_dtype(keys))
    chosen = _resolve_backend("nearest", backend, device, dtype)
    if chosen == "triton":
        storage = torch.promote_types(_storage_dtype(queries), _storage_dtype(keys))
        return _triton.kernel_module("nearest").nearest(queries.to(storage), keys.to(storage), metric == "l2")
    if chosen == "cuda":
        storage = torch.promote_types(_storage_dtype(queries), _storage_dtype(keys))
        return torch.ops.mqnet_fast.nearest(queries.to(storage), keys.to(storage), metric)
    queries, keys = queries.to(dtype), keys.to(dtype)
    if chosen == "torch":
        return reference.nearest(queries, keys, metric)
    return torch.ops.mqnet_fast.nearest(queries, keys, metric)


def fl_gains(ground: torch.Tensor, candidates: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
             ground2: torch.Tensor | None = None, candidates2: torch.Tensor | None = None,
             backend: str = "auto") -> torch.Tensor:
    """Saturated facility-location gains (SIMILAR's FLCMI greedy; plain facility location with
    hi = +inf): for every candidate j,

        gain_j = sum_i max(min(s_ij, hi_i) - lo_i, 0),   s_ij = ground_i . candidates_j
                                                          (times ground2_i . candidates2_j if given).

    For f(A) = sum_i g_i(max_{a in A} s_ia) with g_i(m) = max(min(m, a_i) - b_i, 0), the gain of adding
    j is this with lo_i = clamp(current max_i, b_i, a_i) and hi_i = a_i. Unit rows make s a cosine
    similarity; two factors give the cosine of Kronecker products (a gradient embedding's) without
    forming them.

    Args:
        ground: (n, d) float; candidates: (m, d); lo: (n,) finite; hi: (n,), +inf allowed;
        ground2: (n, e) and candidates2: (m, e), both or neither.

    Returns: (m,) in the compute dtype (float32 or float64). The compiled kernel sums each
    candidate's terms in float64 in ground-row order, the Triton kernel in float32 per tile; the
    reference sums the (n, chunk) block in the input dtype. No (n, m) matrix is formed.

    Example:
        >>> g = torch.eye(3); lo = torch.zeros(3); hi = torch.full((3,), float("inf"))
        >>> fl_gains(g, torch.tensor([[1.0, 1.0, 0.0]]), lo, hi)
        tensor([2.])
    """
    checks.tensors(ground=ground, candidates=candidates, lo=lo, hi=hi)
    checks.tensors(optional=True, ground2=ground2, candidates2=candidates2)
    device = checks.same_device(ground=ground, candidates=candidates, lo=lo, hi=hi, ground2=ground2,
                                candidates2=candidates2)
    # a gain sums n similarities, each a sum over d (times one over e) products: bounded so that no
    # partial sum overflows the compute dtype
    factors = 1 if ground2 is None else 2
    terms = ground.shape[0] * ground.shape[1] * (1 if ground2 is None else max(1, ground2.shape[-1]))
    ground = checks.matrix("ground", ground, products=factors, terms=terms)
    candidates = checks.matrix("candidates", candidates, cols=ground.shape[1], allow_empty=True, products=factors,
                               terms=terms)
    lo, hi = lo.detach(), hi.detach()
    n = ground.shape[0]
    for name, t in (("lo", lo), ("hi", hi)):
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"{name} must be 1-D with one value per ground row ({n}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    checks.finite("lo", lo)
    if bool(torch.isnan(hi).any()) or bool((hi == float("-inf")).any()):
        raise ValueError("hi holds NaN or -inf (+inf is allowed: no cap)")
    if (ground2 is None) != (candidates2 is None):
        raise ValueError("give ground2 and candidates2 together (the second similarity factor), or neither")
    dtype = torch.promote_types(checks.compute_dtype(ground), checks.compute_dtype(candidates))
    if ground2 is not None:
        ground2 = checks.matrix("ground2", ground2, rows=n, products=factors, terms=terms)
        candidates2 = checks.matrix("candidates2", candidates2, rows=candidates.shape[0], cols=ground2.shape[1],
                                    allow_empty=True, products=factors, terms=terms)
        dtype = torch.promote_types(dtype, torch.promote_types(checks.compute_dtype(ground2),
                                                               checks.compute_dtype(candidates2)))
    if backend == "cuda":
        raise ValueError("fl_gains: there is no CUDA-source kernel; on CUDA tensors use backend 'triton' or 'auto'")
    chosen = _resolve_backend("fl_gains", backend, device, dtype)
    if candidates.shape[0] == 0:
        return torch.zeros(0, dtype=dtype, device=device)
    if chosen == "triton":
        return _triton.kernel_module("fl_gains").fl_gains(ground, candidates, lo, hi, ground2, candidates2)
    ground, candidates, lo, hi = (t.to(dtype) for t in (ground, candidates, lo, hi))
    if ground2 is not None:
        ground2, candidates2 = ground2.to(dtype), candidates2.to(dtype)
    if chosen == "torch":
        return reference.fl_gains(ground, candidates, lo, hi, ground2, candidates2)
    return torch.ops.mqnet_fast.fl_gains(ground, candidates, lo, hi, ground2, candidates2)


def badge_kmeanspp(probs: torch.Tensor, feats: torch.Tensor, k: int, *,
                   generator: torch.Generator | None = None, backend: str = "auto") -> torch.Tensor:
    """BADGE's k-means++ seeding over the implicit gradient embeddings g_i = (onehot(argmax p_i) - p_i) outer h_i.

    Args:
        probs: (N, C) softmax probabilities; feats: (N, d) penultimate features (same rows).
        k: number of picks, 0 <= k <= N.
        generator: a CPU torch.Generator (None: the global RNG). k - 1 float64 uniforms are drawn from
            it up front, one per D^2-sampled pick, so a seed gives the same picks on every backend.

    Math: g is never formed; |g_i - g_j|^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i.a_j)(h_i.h_j),
    a = onehot - p. First pick: the largest |g| (lowest index on ties). Then each pick draws u and takes
    the first row whose float64 cumulative D^2 (in index order) exceeds u * sum D^2, where D^2 is the
    squared distance to the nearest pick (if every D^2 is 0: the lowest unpicked row).
    Memory O(N (C + d)).

    Returns: (k,) int64 picks in pick order, distinct.

    Example:
        >>> p = torch.softmax(torch.randn(100, 10), 1); h = torch.randn(100, 32)
        >>> badge_kmeanspp(p, h, 5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5])
    """
    checks.tensors(probs=probs, feats=feats)
    device = checks.same_device(probs=probs, feats=feats)
    checks.copy_memory("feats", feats, checks.compute_dtype(feats))
    probs = checks.matrix("probs", probs)
    feats = checks.matrix("feats", feats, rows=probs.shape[0], products=1)
    k = checks.count("k", k, high=probs.shape[0], what=f"the {probs.shape[0]} rows of probs")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    uniforms = torch.rand(max(k - 1, 0), generator=generator, dtype=torch.float64).to(device)
    dtype = torch.promote_types(checks.compute_dtype(probs), checks.compute_dtype(feats))
    chosen = _resolve_backend("badge_kmeanspp", backend, device, dtype)
    if chosen == "triton":
        return _triton.kernel_module("badge_kmeanspp").badge_kmeanspp(
            probs.float(), feats.to(_storage_dtype(feats)), k, uniforms)
    if chosen == "cuda":
        return torch.ops.mqnet_fast.badge_kmeanspp(probs.float(), feats.to(_storage_dtype(feats)), k, uniforms)
    probs, feats = probs.to(dtype), feats.to(dtype)
    if chosen == "torch":
        return reference.badge_kmeanspp(probs, feats, k, uniforms)
    return torch.ops.mqnet_fast.badge_kmeanspp(probs, feats, k, uniforms)


def nonneg_mlp_score(z: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], *,
                     mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """MQ-Net's meta-model Phi on a whole pool: a non-negative MLP, fused.

    Args:
        z: (N, k) meta-inputs (k = 2 for MQ-Net: purity, informativeness).
        weights: a list or tuple of tensors, per layer (out, in), as torch.nn.Linear stores them; used
            as relu(W) (the skyline parametrization: every score is non-decreasing in every input). The
            last layer has out = 1.
        biases: a list or tuple of tensors, per layer (out,).
        mean, std: optional (k,) per-column standardization, applied as (z - mean) / std; std > 0.

    Math: h_0 = (z - mean) / std; h_l = sigmoid(relu(W_l) h_{l-1} + b_l) for hidden layers; the score
    is relu(W_L) h_{L-1} + b_L. Agrees with mqnet_fast.reference.nonneg_mlp_score to float tolerance.

    Returns: (N,) scores in z's compute dtype.

    Example:
        >>> phi = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Sigmoid(), torch.nn.Linear(64, 1))
        >>> w = [phi[0].weight, phi[2].weight]; b = [phi[0].bias, phi[2].bias]
        >>> nonneg_mlp_score(torch.rand(1000, 2), w, b).shape
        torch.Size([1000])
    """
    checks.tensors(z=z)
    weights, biases = checks.tensor_list("weights", weights), checks.tensor_list("biases", biases)
    checks.tensors(optional=True, mean=mean, std=std)
    device = checks.same_device(z=z, mean=mean, std=std, **{f"weights[{i}]": w for i, w in enumerate(weights)},
                                **{f"biases[{i}]": b for i, b in enumerate(biases)})
    z = checks.matrix("z", z, check_values=False)
    dtype = checks.compute_dtype(z)
    chosen = _resolve_backend("nonneg_mlp_score", backend, device, dtype)
    if not weights:
        raise ValueError("weights must hold at least one layer")
    if len(weights) != len(biases):
        raise ValueError(f"weights and biases must have the same length, got {len(weights)} and {len(biases)}")
    width = z.shape[1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        checks.matrix(f"weights[{i}]", w, cols=width, check_values=False)
        if b.dim() != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"biases[{i}] must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        width = w.shape[0]
    if width != 1:
        raise ValueError(f"the last layer must have one output, got weights[-1] of shape {tuple(weights[-1].shape)}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    if mean is not None:
        for name, t in (("mean", mean), ("std", std)):
            if t.shape != (z.shape[1],):
                raise ValueError(f"{name} must have shape ({z.shape[1]},), got {tuple(t.shape)}")
    if chosen == "triton" and len(weights) != 2 and backend == "auto":
        chosen = "torch"  # the Triton kernel is MQ-Net's shape only; any other depth runs the reference
    if chosen == "triton" and len(weights) != 2:
        raise ValueError(f"nonneg_mlp_score: backend 'triton' takes one hidden layer (2 weight matrices, "
                         f"MQ-Net's shape), got {len(weights)}; use backend='torch'")
    if chosen != "triton":  # the Triton kernel checks the values as it reads them: no host sync per argument
        _check_mlp_values(z, weights, biases, mean, std)
    z = z.to(dtype)
    weights = [w.detach().to(dtype) for w in weights]
    biases = [b.detach().to(dtype) for b in biases]
    if mean is not None:
        mean, std = mean.to(dtype), std.to(dtype)
    if chosen == "triton":
        standardize = mean is not None
        if not standardize:
            mean = std = z  # not read
        module = _triton.kernel_module("nonneg_mlp_score")
        scores, flags = module.score(
            z.contiguous(), weights[0].contiguous(), biases[0].contiguous(), weights[1].contiguous(),
            biases[1].contiguous(), mean.contiguous(), std.contiguous(), standardize)
        if flags:
            _check_mlp_values(z, weights, biases, mean if standardize else None, std if standardize else None)
            flagged = [name for bit, name in enumerate(module.FLAG_NAMES) if flags >> bit & 1]
            raise AssertionError(f"the Triton kernel flagged {flagged} as holding bad values, which the checks accept")
        return scores
    if chosen == "torch":
        with torch.no_grad():
            return reference.nonneg_mlp_score(z, weights, biases, mean, std)
    return torch.ops.mqnet_fast.nonneg_mlp_score(z, weights, biases, mean, std)


def _check_mlp_values(z, weights, biases, mean, std) -> None:
    """nonneg_mlp_score's value checks: every input finite, std > 0 (each costs a host sync on a GPU)."""
    checks.finite("z", z)
    for i, (w, b) in enumerate(zip(weights, biases)):
        checks.finite(f"weights[{i}]", w)
        checks.finite(f"biases[{i}]", b)
    if mean is not None:
        checks.finite("mean", mean)
        checks.finite("std", std)
        if bool((std <= 0).any()):
            raise ValueError(f"std must be > 0, got {std.tolist()}")


class RankTrainResult(NamedTuple):
    weights: list[torch.Tensor]  #: [W1 (H, k), W2 (1, H)], trained (every entry >= 0)
    biases: list[torch.Tensor]   #: [b1 (H,), b2 (1,)], trained
    losses: torch.Tensor         #: (S,) each step's loss, before that step's update


def nonneg_mlp_rank_train(z: torch.Tensor, targets: torch.Tensor, batches: torch.Tensor, lr: torch.Tensor,
                          weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], *,
                          momentum: float = 0.9, weight_decay: float = 5e-4, margin: float = 0.1,
                          backend: str = "auto") -> RankTrainResult:
    """Trains a non-negative MLP k -> H -> 1 (MQ-Net's Phi) with SGD on a pairwise margin ranking
    loss: every step of the eager loop (autograd + torch.optim.SGD) in one call.

    Args:
        z: (n, k) float inputs (float32; float64 is computed in float64, half precision in float32).
        targets: (n,) float, what the scores should rank (ties allowed: equal targets are not ordered).
        batches: (S, B) int64 row indices into z, one row per step: that step's mini-batch.
        lr: (S,) float, non-negative: the learning rate of each step.
        weights: [W1 (H, k), W2 (1, H)] as torch.nn.Linear stores them; used as relu(W).
        biases: [b1 (H,), b2 (1,)].
        momentum, weight_decay: torch.optim.SGD's (no dampening, not Nesterov), both >= 0.
        margin: the ranking margin (any finite float).

    Math, per step on the rows r of batches[step] (x_r = z[r], t_r = targets[r]):
    s_r = relu(W2) sigmoid(relu(W1) x_r + b1) + b2; the batch is split in halves and row i paired with
    row i + B // 2 (an odd last row is unpaired); loss = sum_i max(0, margin - sign(t_i - t_j)(s_i - s_j))
    [t_i != t_j] / max(1, #{i: t_i != t_j}). The gradient is autograd's, with relu(W) straight-through
    (dW = d relu(W)) and no gradient where a hinge is exactly at 0 (as torch's clamp). Then SGD:
    g = grad + weight_decay W; buf = g on the first step, else momentum buf + g; W -= lr[step] buf,
    for every parameter (momentum buffers start empty), and then the weights, not the biases, are
    projected onto W >= 0: W = max(W, 0) (projected SGD). A weight SGD pushes below 0 waits at 0,
    where relu(W) = W, and the straight-through gradient can lift it again; weights given with
    negative entries are used as relu(W) in the first step and are >= 0 after it.

    Backends: "cpp" (the compiled loop, CPU tensors), "torch" (mqnet_fast.reference.nonneg_mlp_rank_train,
    the eager loop, any device). "auto" takes the compiled loop whenever it is built, also for CUDA
    tensors: they are copied to the CPU and the results copied back, since S small sequential steps
    would be launch-bound on a GPU (not timed there). The inputs are never modified.

    Returns: RankTrainResult(weights [W1, W2], biases [b1, b2], losses (S,)), new tensors on z's device
    in the compute dtype. Agrees with the reference to float tolerance (tests/test_nonneg_mlp_rank_train.py).

    Example:
        >>> z = torch.randn(500, 2); t = torch.rand(500)
        >>> batches = torch.argsort(torch.rand(100, 500), dim=1)[:, :64]
        >>> w = [torch.rand(64, 2), torch.rand(1, 64) / 8]; b = [torch.zeros(64), torch.zeros(1)]
        >>> res = nonneg_mlp_rank_train(z, t, batches, torch.full((100,), 0.01), w, b)
        >>> res.weights[0].shape, res.losses.shape
        (torch.Size([64, 2]), torch.Size([100]))
    """
    op = "nonneg_mlp_rank_train"
    checks.tensors(z=z, targets=targets, batches=batches, lr=lr)
    weights, biases = checks.tensor_list("weights", weights), checks.tensor_list("biases", biases)
    device = checks.same_device(z=z, targets=targets, batches=batches, lr=lr,
                                **{f"weights[{i}]": w for i, w in enumerate(weights)},
                                **{f"biases[{i}]": b for i, b in enumerate(biases)})
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("triton", "cuda"):
        raise ValueError(f"{op}: there is no {backend!r} kernel (the loop is sequential and tiny); "
                         "use 'auto', 'cpp' or 'torch'")
    z = checks.matrix("z", z)
    n, k = z.shape
    for name, t, size in (("targets", targets, n), ("lr", lr, None)):
        if t.dim() != 1 or (size is not None and t.shape[0] != size):
            raise ValueError(f"{name} must have shape ({size if size is not None else 'S'},), got {tuple(t.shape)}")
        if t.dtype not in checks.FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        checks.finite(name, t)
    if batches.dim() != 2:
        raise ValueError(f"batches must be a 2-D tensor (steps, batch) of row indices, got shape {tuple(batches.shape)}")
    batches = checks.indices("batches", batches.reshape(-1), n, device).view(batches.shape)
    if lr.shape[0] != batches.shape[0]:
        raise ValueError(f"lr must have shape ({batches.shape[0]},), one rate per row of batches, got {tuple(lr.shape)}")
    if bool((lr < 0).any()):
        raise ValueError(f"lr must be >= 0, got a minimum of {lr.min().item()}")
    if len(weights) != 2 or len(biases) != 2:
        raise ValueError(f"{op} trains one hidden layer (k -> H -> 1): weights and biases must hold 2 entries "
                         f"each, got {len(weights)} and {len(biases)}")
    checks.matrix("weights[0]", weights[0], cols=k)
    hidden = weights[0].shape[0]
    checks.matrix("weights[1]", weights[1], rows=1, cols=hidden)
    for i, (b, size) in enumerate(zip(biases, (hidden, 1))):
        if b.shape != (size,):
            raise ValueError(f"biases[{i}] must have shape ({size},), got {tuple(b.shape)}")
        checks.finite(f"biases[{i}]", b)
    for name, value, low in (("momentum", momentum, 0.0), ("weight_decay", weight_decay, 0.0),
                             ("margin", margin, -math.inf)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite float, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    chosen = "cpp" if backend == "auto" and has_compiled() else ("torch" if backend == "auto" else backend)
    run_on = torch.device("cpu") if chosen == "cpp" and backend == "auto" else device
    if chosen == "cpp":
        _resolve_backend(op, "cpp", run_on)
    dtype = checks.compute_dtype(z)
    z, targets, lr = (t.to(device=run_on, dtype=dtype) for t in (z, targets, lr))
    batches = batches.to(run_on)
    weights = [w.detach().to(device=run_on, dtype=dtype) for w in weights]
    biases = [b.detach().to(device=run_on, dtype=dtype) for b in biases]
    if chosen == "torch":
        w, b, losses = reference.nonneg_mlp_rank_train(z, targets, batches, lr, weights, biases, momentum,
                                                       weight_decay, margin)
        return RankTrainResult(w, b, losses)
    w1, b1, w2, b2, losses = torch.ops.mqnet_fast.nonneg_mlp_rank_train(
        z, targets, batches, lr, weights[0], biases[0], weights[1], biases[1], float(momentum),
        float(weight_decay), float(margin))
    return RankTrainResult([w1.to(device), w2.to(device)], [b1.to(device), b2.to(device)], losses.to(device))


def top_b(scores: torch.Tensor, b: int) -> torch.Tensor:
    """Indices of the b largest scores, highest first, ties to the lowest index (deterministic,
    unlike a bare torch.topk). scores: (N,) float. Returns (b,) int64."""
    checks.tensors(scores=scores)
    checks.scores("scores", scores)
    b = checks.count("b", b, high=scores.shape[0], what=f"the {scores.shape[0]} scores")
    if b == 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    threshold = torch.topk(scores, b).values[-1]
    above = torch.nonzero(scores > threshold).squeeze(1)
    at = torch.nonzero(scores == threshold).squeeze(1)[: b - above.numel()]
    chosen = torch.sort(torch.cat([above, at])).values
    # A stable sort of index-ordered rows by descending score keeps tied rows in index order.
    return chosen[torch.sort(scores[chosen], descending=True, stable=True).indices]
