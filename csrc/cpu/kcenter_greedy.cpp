// k-center greedy (farthest-first traversal) on the CPU.
//
// State is O(N): each row's squared distance to its nearest center (min_d2) and which center that
// is (assign). A pick costs one fused pass that updates min_d2 against the new center c and
// reduces the argmax for the next pick.
//
// Pruning (exact): let a be row i's current center, r = d(x_i, a) and D = d(a, c). By the triangle
// inequality d(x_i, c) >= D - r, so if D >= 2r then d(x_i, c) >= r and min_d2[i] cannot decrease:
// the row is skipped without reading it. The test is done in computed (rounded) squared distances:
// each is within a relative gamma = (d + 2) * eps of the true value, so we require
// D2 >= 4 * r2 * (1 + delta) with delta = 4 * gamma, which implies the computed d2(x_i, c) >= r2,
// i.e. the unpruned update would not have changed the row either.
#include "cpu/common.h"

#include <cmath>
#include <vector>

namespace mqnet_fast {
namespace {

constexpr int64_t kRowBlock = 8;         // rows whose distances to the new center are computed together
constexpr int64_t kPickChunk = 512;      // rows per work item of a pick's pass: small, so threads get equal shares
constexpr int64_t kPruneRetry = 16;      // picks between re-tries of pruning that did not pay
constexpr int64_t kInitRows = 2048;     // rows of x per GEMM tile of the labeled init
constexpr int64_t kInitCenters = 512;   // labeled centers per GEMM tile

// |x_r - c|^2 for kRowBlock consecutive rows at once: each vector of c is loaded once for all the
// rows and every row has its own accumulator, so the pass is not bound by one FMA latency chain and
// two loads per multiply (a row at a time runs ~1.7x slower than a plain read of x here). FMA
// accumulation rounds less than mul + add; the bound gamma = (d + 2) eps used by the pruning still
// holds.
template <typename T>
inline void block_squared_distances(const T* __restrict x, int64_t d, const T* __restrict c, T* out) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  T acc[kRowBlock][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int64_t r = 0; r < kRowBlock; ++r) {
      const T* xr = x + r * d + k;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const T diff = xr[l] - c[k + l];
        acc[r][l] = std::fma(diff, diff, acc[r][l]);
      }
    }
  }
  for (int64_t r = 0; r < kRowBlock; ++r) {
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t l = 0; l < kLanes; ++l) total += acc[r][l];
    for (int64_t kk = k; kk < d; ++kk) {
      const T diff = x[r * d + kk] - c[kk];
      total = std::fma(diff, diff, total);
    }
    out[r] = total;
  }
}

// Nearest labeled center for every row: blocked GEMM on mean-centred tiles (the expansion
// |x|^2 + |c|^2 - 2 x.c, fused with a running argmin), then the exact difference-form distance
// to the chosen center. Never materializes more than one kInitRows x kInitCenters tile.
template <typename T>
void init_from_labeled(const at::Tensor& x, const std::vector<int64_t>& centers, T* min_d2,
                       int64_t* assign) {
  const int64_t n = x.size(0), d = x.size(1);
  const at::Tensor mean = x.mean(0, /*keepdim=*/true);
  const at::Tensor index = at::tensor(centers, x.options().dtype(at::kLong));
  std::vector<T> approx(n, std::numeric_limits<T>::infinity());
  at::Tensor tile = at::empty({kInitRows, kInitCenters}, x.options());
  for (int64_t c0 = 0; c0 < (int64_t)centers.size(); c0 += kInitCenters) {
    const int64_t nc = std::min<int64_t>(kInitCenters, centers.size() - c0);
    const at::Tensor cb = x.index_select(0, index.narrow(0, c0, nc)) - mean;
    const at::Tensor cnorm = (cb * cb).sum(1).contiguous();
    const T* cn = cnorm.data_ptr<T>();
    for (int64_t r0 = 0; r0 < n; r0 += kInitRows) {
      const int64_t nr = std::min(kInitRows, n - r0);
      const at::Tensor xb = x.narrow(0, r0, nr) - mean;
      const at::Tensor xnorm = (xb * xb).sum(1).contiguous();
      at::Tensor t = tile.narrow(0, 0, nr).narrow(1, 0, nc);
      at::mm_out(t, xb, cb.t());
      const T* tp = t.data_ptr<T>();
      const int64_t ld = t.stride(0);
      const T* xn = xnorm.data_ptr<T>();
      at::parallel_for(0, nr, 256, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          T best = approx[r0 + r];
          int64_t arg = assign[r0 + r];
          for (int64_t j = 0; j < nc; ++j) {
            const T v = xn[r] + cn[j] - 2 * tp[r * ld + j];
            if (v < best) { best = v; arg = c0 + j; }
          }
          approx[r0 + r] = best;
          assign[r0 + r] = arg;
        }
      });
    }
  }
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      min_d2[i] = squared_distance(xp + i * d, xp + centers[assign[i]] * d, d);
  });
  for (int64_t j = 0; j < (int64_t)centers.size(); ++j) {  // a center is at distance 0, exactly
    min_d2[centers[j]] = 0;
    assign[centers[j]] = j;
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> kcenter_greedy_kernel(const at::Tensor& x_in,
                                                                      const at::Tensor& labeled,
                                                                      int64_t budget,
                                                                      const at::Tensor& excluded) {
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T inf = std::numeric_limits<T>::infinity();
  const T delta = 4 * (d + 2) * std::numeric_limits<T>::epsilon();

  at::Tensor min_d2_t = at::full({n}, inf, x.options());
  T* min_d2 = min_d2_t.data_ptr<T>();
  std::vector<int64_t> assign(n, -1);
  std::vector<uint8_t> eligible(n, 1);
  const at::Tensor excl = excluded.to(at::kBool).contiguous();
  const bool* ex = excl.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) eligible[i] = !ex[i];

  std::vector<int64_t> centers;
  const at::Tensor lab = labeled.to(at::kLong).contiguous();
  const int64_t* lp = lab.data_ptr<int64_t>();
  std::vector<uint8_t> is_center(n, 0);
  for (int64_t j = 0; j < lab.numel(); ++j) {
    if (!is_center[lp[j]]) centers.push_back(lp[j]);
    is_center[lp[j]] = 1;
    eligible[lp[j]] = 0;
  }
  int64_t available = 0;
  for (int64_t i = 0; i < n; ++i) available += eligible[i];
  TORCH_CHECK(budget <= available, "budget (", budget, ") exceeds the ", available,
              " rows that are neither labeled nor excluded");
  if (!centers.empty()) init_from_labeled<T>(x, centers, min_d2, assign.data());

  at::Tensor picks_t = at::empty({budget}, x.options().dtype(at::kLong));
  at::Tensor radii_t = at::empty({budget}, x.options());
  int64_t* picks = picks_t.data_ptr<int64_t>();
  T* radii = radii_t.data_ptr<T>();

  const int64_t chunks = num_chunks(n, kPickChunk);
  std::vector<ArgBest<T>> chunk_best(chunks);
  std::vector<T> center_d2;  // squared distance from each center to the newest one
  bool pruning_pays = true;
  std::vector<int64_t> chunk_skipped(chunks, 0);
  auto reduce_best = [&]() {
    ArgBest<T> best{-inf, n};
    for (const auto& cb : chunk_best)
      if (cb.index < n && beats_max(cb.value, cb.index, best)) best = cb;
    return best;
  };
  // Argmax of the initial state (pruned passes compute it fused with the update).
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      ArgBest<T> best{-inf, n};
      for (int64_t i = ch * kPickChunk; i < std::min(n, (ch + 1) * kPickChunk); ++i)
        if (eligible[i] && beats_max(min_d2[i], i, best)) best = {min_d2[i], i};
      chunk_best[ch] = best;
    }
  });

  for (int64_t step = 0; step < budget; ++step) {
    const ArgBest<T> best = reduce_best();
    const int64_t c = best.index;
    picks[step] = c;
    radii[step] = std::sqrt(best.value);
    eligible[c] = 0;
    const int64_t m = centers.size();
    centers.push_back(c);
    const T* xc = xp + c * d;
    // Computing the center-to-center distances costs m*d; the unpruned pass costs n*d. Pruning is
    // also skipped while it does not pay (the last pruned pass skipped fewer rows than there are
    // centers, as on unstructured data), re-tried every kPruneRetry picks. Either way the result is
    // the same: pruning only skips rows whose distance could not have changed.
    const bool prune = m > 0 && 2 * m <= n && (pruning_pays || step % kPruneRetry == 0);
    if (prune) {
      center_d2.resize(m);
      at::parallel_for(0, m, 64, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) center_d2[j] = squared_distance(xp + centers[j] * d, xc, d);
      });
    }
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        ArgBest<T> local{-inf, n};
        int64_t skipped = 0;
        const int64_t end = std::min(n, (ch + 1) * kPickChunk);
        for (int64_t i0 = ch * kPickChunk; i0 < end; i0 += kRowBlock) {
          const int64_t rows = std::min(kRowBlock, end - i0);
          bool needed[kRowBlock];
          int64_t count = 0;
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t a = assign[i0 + r];
            needed[r] = !prune || a < 0 || center_d2[a] < 4 * min_d2[i0 + r] * (1 + delta);
            count += needed[r];
          }
          skipped += rows - count;
          T d2[kRowBlock];
          // A block is read whole only when most of its rows need it (pruned rows are not read).
          if (rows == kRowBlock && 2 * count > kRowBlock) {
            block_squared_distances(xp + i0 * d, d, xc, d2);
          } else {
            for (int64_t r = 0; r < rows; ++r)
              if (needed[r]) d2[r] = squared_distance(xp + (i0 + r) * d, xc, d);
          }
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            if (needed[r] && d2[r] < min_d2[i]) {
              min_d2[i] = d2[r];
              assign[i] = m;
            }
            if (eligible[i] && beats_max(min_d2[i], i, local)) local = {min_d2[i], i};
          }
        }
        chunk_best[ch] = local;
        chunk_skipped[ch] = skipped;
      }
    });
    if (prune) {
      int64_t skipped = 0;
      for (int64_t v : chunk_skipped) skipped += v;
      pruning_pays = skipped >= m;
    }
  }
  return {picks_t, radii_t, min_d2_t.sqrt_()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kcenter_greedy_cpu(const at::Tensor& x,
                                                                  const at::Tensor& labeled,
                                                                  int64_t budget,
                                                                  const at::Tensor& excluded) {
  check_float_matrix(x, "x");
  TORCH_CHECK(labeled.dim() == 1, "labeled must be 1-D, got shape ", labeled.sizes());
  TORCH_CHECK(excluded.dim() == 1 && excluded.size(0) == x.size(0),
              "excluded must have shape (N,) = (", x.size(0), ",), got ", excluded.sizes());
  TORCH_CHECK(budget >= 0, "budget must be >= 0, got ", budget);
  if (labeled.numel() > 0) {
    TORCH_CHECK(labeled.min().item<int64_t>() >= 0 && labeled.max().item<int64_t>() < x.size(0),
                "labeled holds an index out of range [0, ", x.size(0), ")");
  }
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kcenter_greedy_cpu", [&] {
    return kcenter_greedy_kernel<scalar_t>(x, labeled, budget, excluded);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("kcenter_greedy", &kcenter_greedy_cpu); }

}  // namespace mqnet_fast
