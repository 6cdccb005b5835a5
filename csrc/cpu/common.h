// Small helpers shared by the CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

inline void check_float_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for this kernel, got ", t.device());
}

}  // namespace mqnet_fast
