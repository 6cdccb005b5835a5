// Small helpers shared by the CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace mqnet_fast {

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += a[k] * b[k];
  return acc;
}

// Squared Euclidean distance in the difference form (no cancellation for nearby points).
template <typename T>
inline T squared_distance(const T* __restrict a, const T* __restrict b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) {
    const T diff = a[k] - b[k];
    acc += diff * diff;
  }
  return acc;
}

// Best (value, index) with ties resolved to the lowest index.
template <typename T>
struct ArgBest {
  T value;
  int64_t index;
};

template <typename T>
inline bool beats_max(T value, int64_t index, const ArgBest<T>& best) {
  return value > best.value || (value == best.value && index < best.index);
}

template <typename T>
inline bool beats_min(T value, int64_t index, const ArgBest<T>& best) {
  return value < best.value || (value == best.value && index < best.index);
}

// Rows are processed in fixed chunks so that per-chunk partial results (and thus the final
// reduction order) do not depend on the number of threads.
constexpr int64_t kRowChunk = 2048;

inline int64_t num_chunks(int64_t n, int64_t chunk = kRowChunk) { return (n + chunk - 1) / chunk; }

// Splits the queries into blocks of `query_block` rows (whole blocks per thread) and calls
// block(q0, nq, tiles) for each; tiles(visit) multiplies the block by each tile of `key_block` keys in
// turn, one single-threaded GEMM into a buffer of the thread's, and calls visit(k0, nk, product, ld)
// (the nq x nk product, row stride ld) while it is still in cache. No N x M matrix ever exists, and
// each product entry is the same whatever the number of threads.
template <typename T, typename Block>
void for_each_query_block(const at::Tensor& queries, const at::Tensor& keys, int64_t query_block,
                          int64_t key_block, Block block) {
  const int64_t n = queries.size(0), m = keys.size(0);
  at::parallel_for(0, num_chunks(n, query_block), 1, [&](int64_t b, int64_t e) {
    at::Tensor buffer = at::empty({query_block, key_block}, queries.options());
    for (int64_t qb = b; qb < e; ++qb) {
      const int64_t q0 = qb * query_block, nq = std::min(query_block, n - q0);
      const at::Tensor qs = queries.narrow(0, q0, nq);
      block(q0, nq, [&](auto visit) {
        for (int64_t k0 = 0; k0 < m; k0 += key_block) {
          const int64_t nk = std::min(key_block, m - k0);
          at::Tensor t = buffer.narrow(0, 0, nq).narrow(1, 0, nk);
          at::mm_out(t, qs, keys.narrow(0, k0, nk).t());
          visit(k0, nk, static_cast<const T*>(t.data_ptr<T>()), t.stride(0));
        }
      });
    }
  });
}

inline void check_float_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for this kernel, got ", t.device());
}

// Queries and keys of a similarity search: float matrices with the same columns and dtype.
inline void check_query_key_matrices(const at::Tensor& queries, const at::Tensor& keys) {
  check_float_matrix(queries, "queries");
  check_float_matrix(keys, "keys");
  TORCH_CHECK(queries.size(1) == keys.size(1), "queries and keys must have the same number of ",
              "columns, got ", queries.size(1), " and ", keys.size(1));
  TORCH_CHECK(queries.scalar_type() == keys.scalar_type(), "queries and keys must share a dtype, got ",
              queries.scalar_type(), " and ", keys.scalar_type());
}

}  // namespace mqnet_fast
