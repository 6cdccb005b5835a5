// Saturated facility-location gains on the CPU (SIMILAR's FLCMI greedy, plain facility location):
// gain_j = sum_i max(min(s_ij, hi_i) - lo_i, 0). Each thread takes a block of candidates and walks
// the ground rows in tiles: one single-threaded GEMM per tile (two with a second factor), reduced at
// once into float64 sums, so no n x m matrix exists. Each candidate's sum runs over the ground rows
// in index order whatever the thread count, so results do not depend on it.
#include "cpu/common.h"

#include <algorithm>
#include <vector>

namespace mqnet_fast {
namespace {

constexpr int64_t kCandidateBlock = 64;
constexpr int64_t kGroundBlock = 256;

template <typename T>
at::Tensor fl_gains_kernel(const at::Tensor& ground_in, const at::Tensor& cand_in, const at::Tensor& lo_in,
                           const at::Tensor& hi_in, const c10::optional<at::Tensor>& ground2_in,
                           const c10::optional<at::Tensor>& cand2_in) {
  const int64_t n = ground_in.size(0), m = cand_in.size(0);
  const bool two = ground2_in.has_value();
  const at::Tensor ground = ground_in.contiguous(), cand = cand_in.contiguous();
  const at::Tensor ground2 = two ? ground2_in->contiguous() : at::Tensor();
  const at::Tensor cand2 = two ? cand2_in->contiguous() : at::Tensor();
  const at::Tensor lo = lo_in.contiguous(), hi = hi_in.contiguous();
  const T* lop = lo.data_ptr<T>();
  const T* hip = hi.data_ptr<T>();
  at::Tensor gains = at::empty({m}, cand.options());
  T* gp = gains.data_ptr<T>();

  at::parallel_for(0, num_chunks(m, kCandidateBlock), 1, [&](int64_t b, int64_t e) {
    at::Tensor tile = at::empty({kGroundBlock, kCandidateBlock}, cand.options());
    at::Tensor tile2 = two ? at::empty({kGroundBlock, kCandidateBlock}, cand.options()) : at::Tensor();
    std::vector<double> acc(kCandidateBlock);
    for (int64_t cb = b; cb < e; ++cb) {
      const int64_t c0 = cb * kCandidateBlock, nc = std::min(kCandidateBlock, m - c0);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t g0 = 0; g0 < n; g0 += kGroundBlock) {
        const int64_t ng = std::min(kGroundBlock, n - g0);
        at::Tensor t = tile.narrow(0, 0, ng).narrow(1, 0, nc);
        at::mm_out(t, ground.narrow(0, g0, ng), cand.narrow(0, c0, nc).t());
        const T* tp = t.data_ptr<T>();
        const int64_t ld = t.stride(0);
        const T* tp2 = nullptr;
        if (two) {
          at::Tensor t2 = tile2.narrow(0, 0, ng).narrow(1, 0, nc);
          at::mm_out(t2, ground2.narrow(0, g0, ng), cand2.narrow(0, c0, nc).t());
          tp2 = t2.data_ptr<T>();
        }
        for (int64_t r = 0; r < ng; ++r) {
          const T low = lop[g0 + r], high = hip[g0 + r];
          const T* row = tp + r * ld;
          const T* row2 = two ? tp2 + r * ld : nullptr;
          for (int64_t j = 0; j < nc; ++j) {
            const T s = two ? row[j] * row2[j] : row[j];
            const T gain = std::min(s, high) - low;
            if (gain > 0) acc[j] += static_cast<double>(gain);
          }
        }
      }
      for (int64_t j = 0; j < nc; ++j) gp[c0 + j] = static_cast<T>(acc[j]);
    }
  });
  return gains;
}

at::Tensor fl_gains_cpu(const at::Tensor& ground, const at::Tensor& candidates, const at::Tensor& lo,
                        const at::Tensor& hi, const c10::optional<at::Tensor>& ground2,
                        const c10::optional<at::Tensor>& candidates2) {
  check_float_matrix(ground, "ground");
  check_float_matrix(candidates, "candidates");
  const auto dtype = ground.scalar_type();
  TORCH_CHECK(candidates.scalar_type() == dtype && lo.scalar_type() == dtype && hi.scalar_type() == dtype,
              "ground, candidates, lo and hi must share a dtype");
  TORCH_CHECK(candidates.size(1) == ground.size(1), "candidates must have ground's ", ground.size(1),
              " columns, got ", candidates.size(1));
  TORCH_CHECK(lo.dim() == 1 && lo.size(0) == ground.size(0) && hi.dim() == 1 && hi.size(0) == ground.size(0),
              "lo and hi must be (n,) with n = ground's rows (", ground.size(0), ")");
  TORCH_CHECK(ground2.has_value() == candidates2.has_value(), "give ground2 and candidates2 together");
  if (ground2.has_value()) {
    check_float_matrix(*ground2, "ground2");
    check_float_matrix(*candidates2, "candidates2");
    TORCH_CHECK(ground2->scalar_type() == dtype && candidates2->scalar_type() == dtype,
                "ground2 and candidates2 must have ground's dtype");
    TORCH_CHECK(ground2->size(0) == ground.size(0) && candidates2->size(0) == candidates.size(0) &&
                    ground2->size(1) == candidates2->size(1),
                "ground2 must be (n, e) and candidates2 (m, e)");
  }
  return AT_DISPATCH_FLOATING_TYPES(dtype, "fl_gains_cpu", [&] {
    return fl_gains_kernel<scalar_t>(ground, candidates, lo, hi, ground2, candidates2);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("fl_gains", &fl_gains_cpu); }

}  // namespace mqnet_fast
