// CUDA: best key per query without an N x M matrix. Each block owns 64 queries and walks the keys in
// 64-wide tiles; a 64 x 64 tile of dot products is accumulated over d in 32-wide chunks -- with WMMA
// tensor-core fragments (16x16x16, fp32 accumulation) for bf16/fp16 inputs, with CUDA-core FMAs in
// float32 for float32 inputs (exact to rounding; tf32 would drop 13 mantissa bits) -- into shared
// memory, and reduced there into each query's running best. Ties go to the lowest key index: a
// tile is scanned in index order and replaces the running best only when strictly better.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>

namespace mqnet_fast {
namespace {

constexpr int kTile = 64;      // queries per block and keys per tile
constexpr int kChunk = 32;     // dimensions per shared-memory chunk
constexpr int kThreads = 256;  // 8 warps
constexpr int kLd = kTile + 4; // padded row of the dot-product tile (a multiple of 4 floats for WMMA)

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T zero() { return T(0); }
template <>
__device__ __forceinline__ __half zero<__half>() { return __float2half(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() { return __float2bfloat16(0.0f); }

// Loads rows [row0, row0 + kTile) x dims [d0, d0 + kChunk) of a (rows, dim) matrix into shared memory,
// zero outside the matrix.
template <typename T>
__device__ __forceinline__ void load_chunk(const T* __restrict__ src, int64_t rows, int64_t dim, int64_t row0,
                                           int64_t d0, T (*dst)[kChunk]) {
  for (int i = threadIdx.x; i < kTile * kChunk; i += kThreads) {
    const int r = i / kChunk, c = i % kChunk;
    const int64_t gr = row0 + r, gc = d0 + c;
    dst[r][c] = (gr < rows && gc < dim) ? src[gr * dim + gc] : zero<T>();
  }
}

template <typename T>
__device__ void dot_tile(const T* q, const T* k, int64_t n, int64_t m, int64_t dim, int64_t row0, int64_t col0,
                         float (*tile)[kLd]) {
  __shared__ T qs[kTile][kChunk];
  __shared__ T ks[kTile][kChunk];
  constexpr bool kTensorCores = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
  if constexpr (kTensorCores) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;  // warp w owns tile rows 16 (w / 2) .. and columns 32 (w % 2) ..
    const int fr = (warp / 2) * 16, fc = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
    wmma::fill_fragment(acc0, 0.0f);
    wmma::fill_fragment(acc1, 0.0f);
    for (int64_t d0 = 0; d0 < dim; d0 += kChunk) {
      load_chunk(q, n, dim, row0, d0, qs);
      load_chunk(k, m, dim, col0, d0, ks);
      __syncthreads();
      for (int kk = 0; kk < kChunk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b0, b1;  // K^T: K's rows as columns
        wmma::load_matrix_sync(a, &qs[fr][kk], kChunk);
        wmma::load_matrix_sync(b0, &ks[fc][kk], kChunk);
        wmma::load_matrix_sync(b1, &ks[fc + 16][kk], kChunk);
        wmma::mma_sync(acc0, a, b0, acc0);
        wmma::mma_sync(acc1, a, b1, acc1);
      }
      __syncthreads();
    }
    wmma::store_matrix_sync(&tile[fr][fc], acc0, kLd, wmma::mem_row_major);
    wmma::store_matrix_sync(&tile[fr][fc + 16], acc1, kLd, wmma::mem_row_major);
  } else {
    // 16 x 16 threads, each 4 x 4 outputs
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    float acc[4][4] = {};
    for (int64_t d0 = 0; d0 < dim; d0 += kChunk) {
      load_chunk(q, n, dim, row0, d0, qs);
      load_chunk(k, m, dim, col0, d0, ks);
      __syncthreads();
      for (int c = 0; c < kChunk; ++c) {
        float qv[4], kv[4];
        for (int i = 0; i < 4; ++i) qv[i] = to_float(qs[ty * 4 + i][c]);
        for (int j = 0; j < 4; ++j) kv[j] = to_float(ks[tx * 4 + j][c]);
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(qv[i], kv[j], acc[i][j]);
      }
      __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) tile[ty * 4 + i][tx * 4 + j] = acc[i][j];
  }
}

template <typename T>
__global__ void nearest_kernel(const T* __restrict__ q, const T* __restrict__ k, const float* __restrict__ qq,
                               const float* __restrict__ kk, int64_t n, int64_t m, int64_t dim, bool l2,
                               float* __restrict__ values, int64_t* __restrict__ indices) {
  __shared__ float tile[kTile][kLd];
  __shared__ float best[kTile];
  __shared__ int64_t best_idx[kTile];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (threadIdx.x < kTile) {
    best[threadIdx.x] = l2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    best_idx[threadIdx.x] = 0;
  }
  for (int64_t col0 = 0; col0 < m; col0 += kTile) {
    dot_tile<T>(q, k, n, m, dim, row0, col0, tile);
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int r = threadIdx.x;
      const float qr = l2 ? qq[min(row0 + r, n - 1)] : 0.0f;
      float b = best[r];
      int64_t bi = best_idx[r];
      for (int c = 0; c < kTile && col0 + c < m; ++c) {
        const float v = l2 ? (qr + kk[col0 + c]) - 2.0f * tile[r][c] : tile[r][c];
        if (l2 ? v < b : v > b) {
          b = v;
          bi = col0 + c;
        }
      }
      best[r] = b;
      best_idx[r] = bi;
    }
    __syncthreads();
  }
  if (threadIdx.x < kTile && row0 + threadIdx.x < n) {
    const float b = best[threadIdx.x];
    values[row0 + threadIdx.x] = l2 ? sqrtf(fmaxf(b, 0.0f)) : b;
    indices[row0 + threadIdx.x] = best_idx[threadIdx.x];
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_cuda(const at::Tensor& queries_in, const at::Tensor& keys_in,
                                                c10::string_view metric) {
  TORCH_CHECK(queries_in.dim() == 2 && keys_in.dim() == 2, "queries and keys must be 2-D, got ", queries_in.sizes(),
              " and ", keys_in.sizes());
  TORCH_CHECK(queries_in.size(1) == keys_in.size(1), "keys must have ", queries_in.size(1), " columns, got ",
              keys_in.size(1));
  TORCH_CHECK(keys_in.size(0) >= 1, "keys is empty");
  TORCH_CHECK(queries_in.scalar_type() == keys_in.scalar_type(), "queries and keys must have one dtype, got ",
              queries_in.scalar_type(), " and ", keys_in.scalar_type());
  TORCH_CHECK(queries_in.scalar_type() != at::kDouble,
              "the CUDA kernel computes in float32 (half-precision storage allowed), got float64");
  const bool l2 = metric == "l2";
  TORCH_CHECK(l2 || metric == "cosine", "metric must be 'cosine' or 'l2', got '", std::string(metric), "'");
  const c10::cuda::CUDAGuard guard(queries_in.device());
  at::Tensor queries = queries_in, keys = keys_in;
  if (!l2) {  // normalize in float32 (norms clamped at 1e-12, as F.normalize), store in the input dtype
    auto qf = queries.to(at::kFloat), kf = keys.to(at::kFloat);
    queries = (qf / qf.norm(2, {1}, true).clamp_min(1e-12)).to(queries_in.scalar_type());
    keys = (kf / kf.norm(2, {1}, true).clamp_min(1e-12)).to(keys_in.scalar_type());
  }
  queries = queries.contiguous();
  keys = keys.contiguous();
  const int64_t n = queries.size(0), m = keys.size(0), dim = queries.size(1);
  auto qq = queries.to(at::kFloat).pow(2).sum(1).contiguous();
  auto kk = keys.to(at::kFloat).pow(2).sum(1).contiguous();
  auto values = at::empty({n}, queries.options().dtype(at::kFloat));
  auto indices = at::empty({n}, queries.options().dtype(at::kLong));
  if (n == 0) return {values, indices};
  const int blocks = static_cast<int>((n + kTile - 1) / kTile);
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    nearest_kernel<T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(queries.data_ptr()), static_cast<const T*>(keys.data_ptr()), qq.data_ptr<float>(),
        kk.data_ptr<float>(), n, m, dim, l2, values.data_ptr<float>(), indices.data_ptr<int64_t>());
  };
  switch (queries.scalar_type()) {  // no float64 instance: its tiles would not fit in shared memory
    case at::kFloat: launch(float{}); break;
    case at::kHalf: launch(__half{}); break;
    case at::kBFloat16: launch(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "queries must be float32, float16 or bfloat16 for the CUDA kernel, got ",
                         queries.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CUDA, m) { m.impl("nearest", &nearest_cuda); }

}  // namespace mqnet_fast
