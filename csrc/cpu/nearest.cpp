// Nearest-set similarity on the CPU: for each query the best key under cosine similarity (max)
// or Euclidean distance (min). Each thread takes a block of queries and walks the keys in tiles:
// one single-threaded GEMM per tile (kept in that thread's cache) immediately reduced into the
// running best, so no N x M matrix ever exists.
#include "cpu/common.h"

#include <cmath>
#include <vector>

namespace mqnet_fast {
namespace {

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kKeyBlock = 512;

template <typename T>
std::tuple<at::Tensor, at::Tensor> nearest_kernel(const at::Tensor& queries_in,
                                                  const at::Tensor& keys_in, bool cosine) {
  const int64_t n = queries_in.size(0), m = keys_in.size(0);
  at::Tensor queries = queries_in.contiguous();
  at::Tensor keys = keys_in.contiguous();
  const at::Tensor key_norm2 = (keys * keys).sum(1).contiguous();
  const at::Tensor query_norm2 = (queries * queries).sum(1).contiguous();
  // Cosine: keys are normalized once (an M x d copy); a query's norm does not change its argmax,
  // so it only divides the best value. Norms are clamped at 1e-12 as in F.normalize.
  if (cosine) keys = keys / key_norm2.sqrt().clamp_min(1e-12).unsqueeze(1);
  at::Tensor values = at::empty({n}, queries.options());
  at::Tensor indices = at::empty({n}, queries.options().dtype(at::kLong));
  T* vp = values.data_ptr<T>();
  int64_t* ip = indices.data_ptr<int64_t>();
  const T* kn = key_norm2.data_ptr<T>();
  const T* qn = query_norm2.data_ptr<T>();
  const T inf = std::numeric_limits<T>::infinity();

  for_each_query_block<T>(queries, keys, kQueryBlock, kKeyBlock, [&](int64_t q0, int64_t nq, auto tiles) {
    std::vector<ArgBest<T>> best(nq, ArgBest<T>{cosine ? -inf : inf, m});
    tiles([&](int64_t k0, int64_t nk, const T* tp, int64_t ld) {
      for (int64_t r = 0; r < nq; ++r) {
        ArgBest<T>& bb = best[r];
        const T* row = tp + r * ld;
        if (cosine) {
          for (int64_t j = 0; j < nk; ++j)
            if (row[j] > bb.value) bb = {row[j], k0 + j};
        } else {
          for (int64_t j = 0; j < nk; ++j) {
            const T v = qn[q0 + r] + kn[k0 + j] - 2 * row[j];
            if (v < bb.value) bb = {v, k0 + j};
          }
        }
      }
    });
    for (int64_t r = 0; r < nq; ++r) {
      vp[q0 + r] = cosine ? best[r].value / std::max<T>(std::sqrt(qn[q0 + r]), T(1e-12))
                          : std::sqrt(std::max<T>(best[r].value, 0));
      ip[q0 + r] = best[r].index;
    }
  });
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> nearest_cpu(const at::Tensor& queries, const at::Tensor& keys,
                                               c10::string_view metric) {
  check_query_key_matrices(queries, keys);
  TORCH_CHECK(keys.size(0) > 0, "keys must hold at least one row");
  TORCH_CHECK(metric == "cosine" || metric == "l2", "metric must be 'cosine' or 'l2', got '",
              std::string(metric), "'");
  return AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "nearest_cpu", [&] {
    return nearest_kernel<scalar_t>(queries, keys, metric == "cosine");
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("nearest", &nearest_cpu); }

}  // namespace mqnet_fast
