// CUDA: BADGE k-means++ seeding over implicit gradient embeddings with no host synchronization.
// Same design as mqnet_fast/ops/badge_kmeanspp_triton.py: per pick, `update_d2` (one warp per row) lowers
// D^2 with |g_i - g_c|^2 = G_i + G_c - 2 (a_i.a_c)(h_i.h_c), the center's index read from device
// memory, and zeroes the picked row; sampling stays on the device (float64 cumsum, searchsorted
// against the pre-drawn uniform, the reference's two edge cases as tensor selects).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace mqnet_fast {
namespace {

constexpr int kWarps = 8;

template <typename T>
__global__ void update_d2(const float* __restrict__ a, const T* __restrict__ h, const float* __restrict__ g,
                          float* __restrict__ d2, const int64_t* __restrict__ center, int64_t n, int64_t classes,
                          int64_t dim) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp;
  if (row >= n) return;
  const int64_t c = *center;
  float ad = 0.f, hd = 0.f;
  for (int64_t j = lane; j < classes; j += 32) ad += a[row * classes + j] * a[c * classes + j];
  for (int64_t j = lane; j < dim; j += 32) hd += static_cast<float>(h[row * dim + j]) * static_cast<float>(h[c * dim + j]);
  for (int offset = 16; offset > 0; offset >>= 1) {
    ad += __shfl_down_sync(0xffffffffu, ad, offset);
    hd += __shfl_down_sync(0xffffffffu, hd, offset);
  }
  if (lane == 0) {
    float dist = (g[row] + g[c]) - 2.f * (ad * hd);
    dist = dist > 0.f ? dist : 0.f;
    float v = d2[row];
    v = dist < v ? dist : v;
    d2[row] = row == c ? 0.f : v;
  }
}

at::Tensor badge_kmeanspp_cuda(const at::Tensor& probs_in, const at::Tensor& feats_in, int64_t k,
                               const at::Tensor& uniforms) {
  TORCH_CHECK(probs_in.dim() == 2 && feats_in.dim() == 2, "probs and feats must be 2-D, got ", probs_in.sizes(),
              " and ", feats_in.sizes());
  TORCH_CHECK(probs_in.size(0) == feats_in.size(0), "feats must have ", probs_in.size(0), " rows, got ",
              feats_in.size(0));
  TORCH_CHECK(k >= 0 && k <= probs_in.size(0), "k must be in 0..", probs_in.size(0), ", got ", k);
  TORCH_CHECK(uniforms.numel() >= std::max<int64_t>(k - 1, 0), "uniforms must hold k - 1 = ", k - 1,
              " draws, got ", uniforms.numel());
  const c10::cuda::CUDAGuard guard(probs_in.device());
  const int64_t n = probs_in.size(0);
  auto probs = probs_in.to(at::kFloat).contiguous();
  auto feats = feats_in.scalar_type() == at::kDouble ? feats_in.to(at::kFloat).contiguous() : feats_in.contiguous();
  auto a = at::one_hot(probs.argmax(1), probs.size(1)).to(at::kFloat) - probs;
  auto hf = feats.to(at::kFloat);
  auto g = ((a * a).sum(1) * (hf * hf).sum(1)).contiguous();
  auto picks = at::empty({k}, probs.options().dtype(at::kLong));
  if (k == 0) return picks;
  auto d2 = at::full({n}, std::numeric_limits<float>::infinity(), probs.options());
  auto picked = at::zeros({n}, probs.options().dtype(at::kBool));
  auto rows = at::arange(n, probs.options().dtype(at::kLong));
  auto u = uniforms.to(probs.device(), at::kDouble);
  picks.narrow(0, 0, 1).copy_(g.argmax().view({1}));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = static_cast<int>((n + kWarps - 1) / kWarps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "badge_kmeanspp_cuda", [&] {
    for (int64_t step = 0; step < k; ++step) {
      auto center = picks.narrow(0, step, 1);
      picked.index_fill_(0, center, true);
      update_d2<scalar_t><<<blocks, kWarps * 32, 0, stream>>>(a.data_ptr<float>(), feats.data_ptr<scalar_t>(),
                                                             g.data_ptr<float>(), d2.data_ptr<float>(),
                                                             center.data_ptr<int64_t>(), n, a.size(1), feats.size(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (step + 1 == k) break;
      auto cum = at::cumsum(d2.to(at::kDouble), 0);
      auto total = cum.narrow(0, n - 1, 1);
      auto chosen = at::searchsorted(cum, u.narrow(0, step, 1) * total, /*out_int32=*/false, /*right=*/true);
      auto last_positive = at::where(d2 > 0, rows, -1).max().view({1});
      chosen = at::where(chosen == n, last_positive, chosen);
      auto lowest_unpicked = picked.to(at::kChar).argmin().view({1});
      picks.narrow(0, step + 1, 1).copy_(at::where(total == 0, lowest_unpicked, chosen));
    }
  });
  return picks;
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CUDA, m) { m.impl("badge_kmeanspp", &badge_kmeanspp_cuda); }

}  // namespace mqnet_fast
