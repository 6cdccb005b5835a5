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

#include <algorithm>
#include <cmath>
#include <vector>

namespace mqnet_fast {
namespace {

constexpr int64_t kRowBlock = 8;         // rows whose distances to the new center are computed together
constexpr int64_t kPickChunk = 512;      // rows per work item of a pick's pass: small, so threads get equal shares
constexpr int64_t kPruneRetry = 16;      // picks between re-tries of pruning that did not pay
constexpr int64_t kInitRows = 2048;     // rows of x per GEMM tile of the labeled init
constexpr int64_t kInitCenters = 512;   // labeled centers per GEMM tile
constexpr int64_t kScan = 32;           // centers per candidate test of the labeled init

// a[0] + ... + a[kWidth - 1] by halves: the upper half added onto the lower, then recursively. The
// widths are constants, so the loops unroll and a stays in registers.
template <int64_t kWidth, typename T>
inline T pairwise_sum(T* a) {
  if constexpr (kWidth == 1) {
    return a[0];
  } else {
    for (int64_t l = 0; l < kWidth / 2; ++l) a[l] += a[l + kWidth / 2];
    return pairwise_sum<kWidth / 2>(a);
  }
}

// |x_r - c|^2 for kRows rows at once: each vector of c is loaded once for all the rows and every
// row has its own accumulators, so the pass is not bound by one FMA latency chain and two loads per
// multiply (a row at a time runs ~1.7x slower than a plain read of x here).
//
// Every distance of the kernel (blocks of x, the rows a pruned pass still reads, the labeled init,
// the pruning's center distances) comes from this one function, and its arithmetic depends only on
// the two rows' values: element k is added by FMA to lane k % kLanes, the tail elements to lanes
// 0.., then the lanes are summed in a fixed pairwise order. So identical rows get identical
// distances wherever they sit (in which block, work item or group of rows), and an exact duplicate
// cannot win a tie against the lower-index copy. (The kernel used to mix this with a one-row
// mul + add `omp simd reduction`, whose order the compiler chooses per call site: copies came out
// an ulp apart depending on which path the pruning sent them through.) FMA accumulation rounds
// less than mul + add; the bound gamma = (d + 2) eps used by the pruning holds for any order.
template <int64_t kRows, typename T>
inline void rows_squared_distances(const T* const* rows, int64_t d, const T* __restrict c,
                                   T* __restrict out) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  T acc[kRows][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int64_t r = 0; r < kRows; ++r) {
      const T* __restrict xr = rows[r] + k;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const T diff = xr[l] - c[k + l];
        acc[r][l] = std::fma(diff, diff, acc[r][l]);
      }
    }
  }
  // The tail as one masked step over all the lanes (fma(0, 0, a) = a): a loop of fixed length keeps
  // acc in registers, where one indexed by the tail's length would put it in memory.
  const int64_t tail = d - k;
  for (int64_t r = 0; r < kRows; ++r) {
    const T* __restrict xr = rows[r] + k;
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      const T diff = l < tail ? xr[l] - c[k + l] : T(0);
      acc[r][l] = std::fma(diff, diff, acc[r][l]);
    }
  }
  for (int64_t r = 0; r < kRows; ++r) out[r] = pairwise_sum<kLanes>(acc[r]);
}

// The distances of up to kGroup scattered rows (those a pruned pass still reads, the centers), in
// one call so that they overlap their FMA chains and memory reads.
constexpr int64_t kGroup = 4;
template <typename T>
inline void group_squared_distances(const T* const* rows, int64_t count, int64_t d, const T* c, T* out) {
  static_assert(kGroup == 4, "one case per group size");
  switch (count) {
    case 4: rows_squared_distances<4>(rows, d, c, out); break;
    case 3: rows_squared_distances<3>(rows, d, c, out); break;
    case 2: rows_squared_distances<2>(rows, d, c, out); break;
    case 1: rows_squared_distances<1>(rows, d, c, out); break;
    default: break;
  }
}

template <typename T>
inline T row_squared_distance(const T* x, int64_t d, const T* c) {
  T out;
  rows_squared_distances<1>(&x, d, c, &out);
  return out;
}

// Nearest labeled center for every row: blocked GEMM on mean-centred tiles (the expansion
// |x|^2 + |c|^2 - 2 x.c) narrows the centers down to the few within the expansion's rounding of the
// smallest value, and the exact difference-form distance to each of those decides. Never
// materializes more than one kInitRows x kInitCenters tile.
//
// Why not take the GEMM's argmin: the expansion's error is absolute, so where the centred norms
// dwarf the distances (a tight cluster far from the pool's mean) it cannot rank the centers, and its
// argmin gave rows the distance to a center up to 3x farther than the nearest one (float32 and
// float64); nor is a BLAS bound to round a row the same wherever it sits in the tiles. The result is
// the minimum over the centers, as the reference and the per-pick pass define it, from the one
// distance function; the candidate test keeps every center that can be that minimum. Let a, b be
// the centred rows as rounded (the mean cancels, so only their rounding counts) and
// t_j = |x - c_j|^2. The expansion's value v_j is within E = (d + 5) eps (|a| + |b_j|)^2 of t_j
// (gamma_d for each norm and the dot, 2 eps for rounding the centred rows, 2 eps for the two final
// adds); the difference form s_j is within g = (d + 2) eps of t_j, relatively. With V the smallest v
// so far (from center m), s_min <= s_m <= (1 + g)(V + E) and so v_j* <= (V + E)(1 + 3g) + E for the
// exact minimizer j*. The test below doubles E (for the norms' own rounding) and takes 4g; a larger
// running V only keeps more candidates.
template <typename T>
void init_from_labeled(const at::Tensor& x, const std::vector<int64_t>& centers, T* min_d2,
                       int64_t* assign) {
  const int64_t n = x.size(0), d = x.size(1), n_centers = centers.size();
  const T* xp = x.data_ptr<T>();
  const at::Tensor mean = x.mean(0, /*keepdim=*/true);
  const at::Tensor index = at::tensor(centers, x.options().dtype(at::kLong));
  auto centred_centers = [&](int64_t c0, int64_t nc) {
    return x.index_select(0, index.narrow(0, c0, nc)) - mean;
  };
  // The bound needs the largest |b_j| before the first tile: one cheap pass over the centers.
  at::Tensor cnorm_all = at::empty({n_centers}, x.options());
  for (int64_t c0 = 0; c0 < n_centers; c0 += kInitCenters) {
    const int64_t nc = std::min(kInitCenters, n_centers - c0);
    const at::Tensor cb = centred_centers(c0, nc);
    cnorm_all.narrow(0, c0, nc).copy_((cb * cb).sum(1));
  }
  const T* cn_all = cnorm_all.data_ptr<T>();
  const T cmax = std::sqrt(cnorm_all.max().item<T>());
  const T eps = std::numeric_limits<T>::epsilon();
  const T expansion_err = 2 * (d + 5) * eps;
  const T exact_err = 4 * (d + 2) * eps;
  std::vector<T> approx(n, std::numeric_limits<T>::infinity());
  at::Tensor tile = at::empty({kInitRows, kInitCenters}, x.options());
  for (int64_t c0 = 0; c0 < n_centers; c0 += kInitCenters) {
    const int64_t nc = std::min(kInitCenters, n_centers - c0);
    const at::Tensor cb = centred_centers(c0, nc);
    const T* cn = cn_all + c0;
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
        // a local copy: read through the capture, cn[j] in the simd loops below became a gather
        const T* const cn_tile = cn;
        for (int64_t r = b; r < e; ++r) {
          const int64_t i = r0 + r;
          const T* v = tp + r * ld;
          const T xr2 = xn[r];
          // min is exact in any order, so the vectorized reduction changes nothing
          T best = approx[i];
#pragma omp simd reduction(min : best)
          for (int64_t j = 0; j < nc; ++j) best = std::min(best, xr2 + cn_tile[j] - 2 * v[j]);
          approx[i] = best;
          const T reach = std::sqrt(xr2) + cmax;
          const T err = expansion_err * reach * reach;
          const T threshold = (best + err) * (1 + exact_err) + err;
          // Candidates are rare (usually the argmin alone): a vector test per kScan centers, and
          // only a group holding one is scanned again (the same expression, rounded the same way).
          for (int64_t j0 = 0; j0 < nc; j0 += kScan) {
            const int64_t j1 = std::min(nc, j0 + kScan);
            int64_t hits = 0;
#pragma omp simd reduction(+ : hits)
            for (int64_t j = j0; j < j1; ++j) hits += xr2 + cn_tile[j] - 2 * v[j] <= threshold;
            if (hits == 0) continue;
            for (int64_t j = j0; j < j1; ++j) {
              if (xr2 + cn_tile[j] - 2 * v[j] > threshold) continue;
              // centers in increasing position, strict <: a tie keeps the first
              const T s = row_squared_distance(xp + i * d, d, xp + centers[c0 + j] * d);
              if (s < min_d2[i]) {
                min_d2[i] = s;
                assign[i] = c0 + j;
              }
            }
          }
        }
      });
    }
  }
  for (int64_t j = 0; j < n_centers; ++j) {  // a center is at distance 0, exactly
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
        for (int64_t j0 = b; j0 < e; j0 += kGroup) {
          const int64_t count = std::min(kGroup, e - j0);
          const T* rows[kGroup];
          for (int64_t q = 0; q < count; ++q) rows[q] = xp + centers[j0 + q] * d;
          group_squared_distances(rows, count, d, xc, center_d2.data() + j0);
        }
      });
    }
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      T d2[kPickChunk];
      bool needed[kPickChunk];
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t begin = ch * kPickChunk, end = std::min(n, begin + kPickChunk);
        // Rows the pruning leaves to read are gathered across blocks into groups of kGroup.
        const T* pending[kGroup];
        int64_t pending_at[kGroup];
        int64_t n_pending = 0;
        auto flush = [&]() {
          T out[kGroup];
          group_squared_distances(pending, n_pending, d, xc, out);
          for (int64_t q = 0; q < n_pending; ++q) d2[pending_at[q]] = out[q];
          n_pending = 0;
        };
        int64_t skipped = 0;
        for (int64_t i0 = begin; i0 < end; i0 += kRowBlock) {
          const int64_t rows = std::min(kRowBlock, end - i0);
          bool* block_needed = needed + (i0 - begin);
          int64_t count = 0;
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t a = assign[i0 + r];
            block_needed[r] = !prune || a < 0 || center_d2[a] < 4 * min_d2[i0 + r] * (1 + delta);
            count += block_needed[r];
          }
          skipped += rows - count;
          // A block is read whole only when most of its rows need it (pruned rows are not read).
          if (rows == kRowBlock && 2 * count > kRowBlock) {
            const T* block[kRowBlock];
            for (int64_t r = 0; r < kRowBlock; ++r) block[r] = xp + (i0 + r) * d;
            rows_squared_distances<kRowBlock>(block, d, xc, d2 + (i0 - begin));
            continue;
          }
          for (int64_t r = 0; r < rows; ++r) {
            if (!block_needed[r]) continue;
            pending[n_pending] = xp + (i0 + r) * d;
            pending_at[n_pending++] = i0 + r - begin;
            if (n_pending == kGroup) flush();
          }
        }
        if (n_pending > 0) flush();
        ArgBest<T> local{-inf, n};
        for (int64_t i = begin; i < end; ++i) {
          if (needed[i - begin] && d2[i - begin] < min_d2[i]) {
            min_d2[i] = d2[i - begin];
            assign[i] = m;
          }
          if (eligible[i] && beats_max(min_d2[i], i, local)) local = {min_d2[i], i};
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
