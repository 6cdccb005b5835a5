"""Fused non-negative MLP scoring, N=1,000,000, 2 -> 64 -> 1 with standardization.

Baseline: eager PyTorch (mqnet_fast.reference.nonneg_mlp_score: standardize, linear, sigmoid, linear)."""
import torch

from mqnet_fast import ops

N, HIDDEN = 1_000_000, 64


def _model():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(N, 2, generator=g)
    weights = [torch.randn(HIDDEN, 2, generator=g), torch.randn(1, HIDDEN, generator=g)]
    biases = [torch.randn(HIDDEN, generator=g), torch.randn(1, generator=g)]
    return z, weights, biases, dict(mean=z.mean(0), std=z.std(0))


def test_mlp_cpp(benchmark):
    z, w, b, kw = _model()
    benchmark.group = "mlp"
    benchmark.pedantic(ops.nonneg_mlp_score, args=(z, w, b), kwargs={**kw, "backend": "cpp"}, rounds=10)


def test_mlp_eager_torch(benchmark):
    z, w, b, kw = _model()
    benchmark.group = "mlp"
    benchmark.pedantic(ops.nonneg_mlp_score, args=(z, w, b), kwargs={**kw, "backend": "torch"}, rounds=5)


SGEMM = 2048


def test_mlp_sgemm_rate(benchmark):
    """The machine's float32 GEMM rate, for the compute floor: per row the MLP does 2*(2*64 + 64) = 384
    flops in its layers plus 64 sigmoids, each an exp (range reduction and a degree-6 polynomial:
    8 FMAs = 16 flops) and a reciprocal (~4 flops): 1,664 flops a row, 1.66 GFLOP for N = 1M."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(SGEMM, SGEMM, generator=g), torch.randn(SGEMM, SGEMM, generator=g)
    benchmark.group = "mlp"
    benchmark.extra_info["flop"] = 2 * SGEMM ** 3
    benchmark.pedantic(torch.mm, args=(a, b), rounds=5, warmup_rounds=1)
