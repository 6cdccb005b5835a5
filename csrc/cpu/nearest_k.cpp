// The k best keys per query by dot product (cosine on rows the caller normalized), best first, ties
// to the lower key index, key i optionally skipped for query i. Each thread takes a block of queries
// and walks the keys in tiles: one single-threaded GEMM per tile (kept in that thread's cache), each
// entry offered to the query's k best, held as a heap whose top is the worst of them. Keys arrive
// in index order, so an entry equal to the worst never displaces it (the lower index stays), and the
// result does not depend on the number of threads. No N x M matrix ever exists.
#include "cpu/common.h"

#include <algorithm>
#include <vector>

namespace mqnet_fast {
namespace {

constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyBlock = 512;

template <typename T>
struct Entry {
  T value;
  int64_t index;
};

// a ranks before b: the larger value, or the lower index at equal values.
template <typename T>
inline bool ranks_before(const Entry<T>& a, const Entry<T>& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> nearest_k_kernel(const at::Tensor& queries_in, const at::Tensor& keys_in,
                                                    int64_t k, bool exclude_self) {
  const int64_t n = queries_in.size(0);
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor values = at::empty({n, k}, queries.options());
  at::Tensor indices = at::empty({n, k}, queries.options().dtype(at::kLong));
  T* vp = values.data_ptr<T>();
  int64_t* ip = indices.data_ptr<int64_t>();
  const auto worse_on_top = [](const Entry<T>& a, const Entry<T>& b) { return ranks_before(a, b); };

  for_each_query_block<T>(queries, keys, kQueryBlock, kKeyBlock, [&](int64_t q0, int64_t nq, auto tiles) {
    std::vector<std::vector<Entry<T>>> best(nq);
    for (auto& heap : best) heap.reserve(k);
    tiles([&](int64_t k0, int64_t nk, const T* tp, int64_t ld) {
      for (int64_t r = 0; r < nq; ++r) {
        std::vector<Entry<T>>& heap = best[r];
        const T* row = tp + r * ld;
        const int64_t self = exclude_self ? q0 + r : -1;
        for (int64_t j = 0; j < nk; ++j) {
          const int64_t index = k0 + j;
          if (index == self) continue;
          if (static_cast<int64_t>(heap.size()) < k) {
            heap.push_back({row[j], index});
            std::push_heap(heap.begin(), heap.end(), worse_on_top);
          } else if (row[j] > heap.front().value) {
            std::pop_heap(heap.begin(), heap.end(), worse_on_top);
            heap.back() = {row[j], index};
            std::push_heap(heap.begin(), heap.end(), worse_on_top);
          }
        }
      }
    });
    for (int64_t r = 0; r < nq; ++r) {
      std::vector<Entry<T>>& heap = best[r];
      std::sort_heap(heap.begin(), heap.end(), worse_on_top);  // best first
      for (int64_t c = 0; c < k; ++c) {
        vp[(q0 + r) * k + c] = heap[c].value;
        ip[(q0 + r) * k + c] = heap[c].index;
      }
    }
  });
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> nearest_k_cpu(const at::Tensor& queries, const at::Tensor& keys, int64_t k,
                                                 bool exclude_self) {
  check_query_key_matrices(queries, keys);
  TORCH_CHECK(!exclude_self || queries.size(0) == keys.size(0), "exclude_self needs as many queries as keys ",
              "(query i is key i), got ", queries.size(0), " and ", keys.size(0));
  const int64_t available = keys.size(0) - (exclude_self ? 1 : 0);
  TORCH_CHECK(k >= 1 && k <= available, "k must be in [1, ", available, "], got ", k);
  return AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "nearest_k_cpu", [&] {
    return nearest_k_kernel<scalar_t>(queries, keys, k, exclude_self);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("nearest_k", &nearest_k_cpu); }

}  // namespace mqnet_fast
