// CUDA: k-center greedy with no host synchronization per pick. Same design as the Triton kernel
// (mqnet_fast/ops/kcenter_greedy_triton.py): per pick, `update_argmax` (one warp per row, many blocks)
// lowers min_d2 with the exact difference-form distance to the newest center, whose index it reads
// from device memory, and writes each block's best eligible (value, index); `pick` (one block)
// reduces those, writes the pick and its radius and marks the row ineligible. Ties go to the
// lowest index everywhere. Accumulation in float (double for float64 input); half rows are widened.
#include <ATen/Dispatch.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

namespace mqnet_fast {
namespace {

constexpr int kWarps = 8;            // rows per block in update_argmax (one warp each)
constexpr int kPickThreads = 1024;

template <typename A>
struct Best {
  A value;
  int64_t index;
};

template <typename A>
__device__ __forceinline__ Best<A> better(Best<A> a, Best<A> b) {
  // larger value wins; equal values: lower index
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

template <typename A>
__device__ __forceinline__ Best<A> warp_best(Best<A> b) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Best<A> other{__shfl_down_sync(0xffffffffu, b.value, offset), __shfl_down_sync(0xffffffffu, b.index, offset)};
    b = better(b, other);
  }
  return b;
}

template <typename T, typename A>
__global__ void update_argmax(const T* __restrict__ x, int64_t n, int64_t dim, const int64_t* __restrict__ center,
                              A* __restrict__ min_d2, const int8_t* __restrict__ eligible,
                              A* __restrict__ block_value, int64_t* __restrict__ block_index) {
  __shared__ A s_value[kWarps];
  __shared__ int64_t s_index[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + warp;
  Best<A> best{-std::numeric_limits<A>::infinity(), row};
  if (row < n) {
    A d2 = min_d2[row];
    if (center != nullptr) {
      const T* xr = x + row * dim;
      const T* xc = x + (*center) * dim;
      A acc = 0;
      for (int64_t j = lane; j < dim; j += 32) {
        const A diff = static_cast<A>(xr[j]) - static_cast<A>(xc[j]);
        acc += diff * diff;
      }
      for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
      acc = __shfl_sync(0xffffffffu, acc, 0);
      if (acc < d2) d2 = acc;
      if (lane == 0) min_d2[row] = d2;
    }
    if (eligible[row]) best.value = d2;
  }
  if (lane == 0) {
    s_value[warp] = best.value;
    s_index[warp] = best.index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Best<A> b{s_value[0], s_index[0]};
    for (int w = 1; w < kWarps; ++w) b = better(b, Best<A>{s_value[w], s_index[w]});
    block_value[blockIdx.x] = b.value;
    block_index[blockIdx.x] = b.index;
  }
}

template <typename A>
__global__ void pick(const A* __restrict__ block_value, const int64_t* __restrict__ block_index, int64_t n_blocks,
                     int8_t* __restrict__ eligible, int64_t* __restrict__ picks, A* __restrict__ radii, int64_t step) {
  __shared__ A s_value[kPickThreads / 32];
  __shared__ int64_t s_index[kPickThreads / 32];
  Best<A> b{-std::numeric_limits<A>::infinity(), std::numeric_limits<int64_t>::max()};
  for (int64_t i = threadIdx.x; i < n_blocks; i += blockDim.x) b = better(b, Best<A>{block_value[i], block_index[i]});
  b = warp_best(b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_value[warp] = b.value;
    s_index[warp] = b.index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Best<A> r{s_value[0], s_index[0]};
    for (int w = 1; w < kPickThreads / 32; ++w) r = better(r, Best<A>{s_value[w], s_index[w]});
    picks[step] = r.index;
    radii[step] = sqrt(r.value);
    eligible[r.index] = 0;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kcenter_greedy_cuda(const at::Tensor& x_in, const at::Tensor& labeled,
                                                                   int64_t budget, const at::Tensor& excluded) {
  TORCH_CHECK(x_in.dim() == 2, "x must be a 2-D tensor, got shape ", x_in.sizes());
  TORCH_CHECK(budget >= 0, "budget must be >= 0, got ", budget);
  TORCH_CHECK(excluded.dim() == 1 && excluded.size(0) == x_in.size(0), "excluded must have shape (",
              x_in.size(0), "), got ", excluded.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  const bool wide = x.scalar_type() == at::kDouble;
  auto acc_options = x.options().dtype(wide ? at::kDouble : at::kFloat);
  auto min_d2 = at::full({n}, std::numeric_limits<double>::infinity(), acc_options);
  auto eligible = excluded.logical_not().to(at::kChar);
  auto lab = labeled.to(at::kLong).contiguous();
  if (lab.numel() > 0) eligible.index_fill_(0, lab, 0);
  const int64_t n_blocks = (n + kWarps - 1) / kWarps;
  auto block_value = at::empty({std::max<int64_t>(n_blocks, 1)}, acc_options);
  auto block_index = at::empty({std::max<int64_t>(n_blocks, 1)}, x.options().dtype(at::kLong));
  auto picks = at::empty({budget}, x.options().dtype(at::kLong));
  auto radii = at::empty({budget}, acc_options);
  if (n == 0) return {picks, radii, min_d2};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kcenter_greedy_cuda", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto update = [&](const int64_t* center) {
      update_argmax<scalar_t, A><<<n_blocks, kWarps * 32, 0, stream>>>(
          x.data_ptr<scalar_t>(), n, dim, center, min_d2.data_ptr<A>(), eligible.data_ptr<int8_t>(),
          block_value.data_ptr<A>(), block_index.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    for (int64_t j = 0; j < lab.numel(); ++j) update(lab.data_ptr<int64_t>() + j);
    if (lab.numel() == 0) update(nullptr);
    for (int64_t step = 0; step < budget; ++step) {
      pick<A><<<1, kPickThreads, 0, stream>>>(block_value.data_ptr<A>(), block_index.data_ptr<int64_t>(), n_blocks,
                                              eligible.data_ptr<int8_t>(), picks.data_ptr<int64_t>(),
                                              radii.data_ptr<A>(), step);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      update(picks.data_ptr<int64_t>() + step);
    }
  });
  return {picks, radii, min_d2.sqrt()};
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CUDA, m) { m.impl("kcenter_greedy", &kcenter_greedy_cuda); }

}  // namespace mqnet_fast
