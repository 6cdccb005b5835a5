// CUDA: MQ-Net's Phi on a whole pool, one thread per row (standardize -> relu(W1) -> sigmoid ->
// relu(W2)). The clamped weights of both layers sit in shared memory; the hidden layer is never
// stored. One hidden layer (MQ-Net's 2 -> 64 -> 1) and at most kMaxInputs meta-inputs.
#include <ATen/Dispatch.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace mqnet_fast {
namespace {

constexpr int kMaxInputs = 16;
constexpr int kThreads = 256;

template <typename T>
__global__ void nonneg_mlp_score_kernel(const T* __restrict__ z, int64_t n, int k, int64_t stride_z,
                                        const T* __restrict__ w1, const T* __restrict__ b1,
                                        const T* __restrict__ w2, const T* __restrict__ b2,
                                        const T* __restrict__ mean, const T* __restrict__ std, int hidden,
                                        T* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  T* w1s = reinterpret_cast<T*>(smem_raw);  // (hidden, k) relu'd
  T* b1s = w1s + hidden * k;                // (hidden,)
  T* w2s = b1s + hidden;                    // (hidden,) relu'd
  for (int i = threadIdx.x; i < hidden * k; i += blockDim.x) w1s[i] = w1[i] > T(0) ? w1[i] : T(0);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    b1s[i] = b1[i];
    w2s[i] = w2[i] > T(0) ? w2[i] : T(0);
  }
  __syncthreads();
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= n) return;
  T x[kMaxInputs];
  for (int j = 0; j < k; ++j) {
    x[j] = z[row * stride_z + j];
    if (mean != nullptr) x[j] = (x[j] - mean[j]) / std[j];
  }
  T score = b2[0];
  for (int u = 0; u < hidden; ++u) {
    T s = b1s[u];
    for (int j = 0; j < k; ++j) s += w1s[u * k + j] * x[j];
    score += w2s[u] * (T(1) / (T(1) + exp(-s)));
  }
  out[row] = score;
}

at::Tensor nonneg_mlp_score_cuda(const at::Tensor& z, at::TensorList weights, at::TensorList biases,
                                 const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& std) {
  TORCH_CHECK(z.dim() == 2, "z must be a 2-D tensor, got shape ", z.sizes());
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              "z must be float32 or float64, got ", z.scalar_type());
  TORCH_CHECK(weights.size() == 2 && biases.size() == 2,
              "the CUDA kernel takes one hidden layer (2 weight matrices), got ", weights.size());
  const int k = static_cast<int>(z.size(1));
  TORCH_CHECK(k >= 1 && k <= kMaxInputs, "z must have 1..", kMaxInputs, " columns for the CUDA kernel, got ", k);
  const int hidden = static_cast<int>(weights[0].size(0));
  TORCH_CHECK(weights[0].size(1) == k, "weights[0] must have ", k, " columns, got ", weights[0].size(1));
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(0) == 1 && weights[1].size(1) == hidden,
              "weights[1] must have shape (1, ", hidden, "), got ", weights[1].sizes());
  TORCH_CHECK(mean.has_value() == std.has_value(), "mean and std must be given together");
  const c10::cuda::CUDAGuard guard(z.device());
  auto w1 = weights[0].contiguous(), w2 = weights[1].contiguous();
  auto b1 = biases[0].contiguous(), b2 = biases[1].contiguous();
  at::Tensor m, s;
  if (mean.has_value()) {
    m = mean->contiguous();
    s = std->contiguous();
  }
  auto out = at::empty({z.size(0)}, z.options());
  const int64_t n = z.size(0);
  if (n == 0) return out;
  const int blocks = static_cast<int>((n + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "nonneg_mlp_score_cuda", [&] {
    const size_t smem = sizeof(scalar_t) * (static_cast<size_t>(hidden) * k + 2 * hidden);
    nonneg_mlp_score_kernel<scalar_t><<<blocks, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), n, k, z.stride(0), w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(),
        w2.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), m.defined() ? m.data_ptr<scalar_t>() : nullptr,
        s.defined() ? s.data_ptr<scalar_t>() : nullptr, hidden, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CUDA, m) { m.impl("nonneg_mlp_score", &nonneg_mlp_score_cuda); }

}  // namespace mqnet_fast
