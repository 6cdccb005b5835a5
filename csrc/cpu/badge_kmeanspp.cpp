// BADGE k-means++ seeding over implicit gradient embeddings g_i = a_i (x) h_i, a_i = onehot(argmax
// p_i) - p_i, never materialized:
//   |g_i - g_j|^2 = G_i + G_j - 2 (a_i . a_j)(h_i . h_j),   G_i = |a_i|^2 |h_i|^2.
// Each pick costs one fused pass that updates D^2 (squared distance to the nearest center) and,
// for the next pick, one float64 inverse-CDF scan in index order (the same accumulation order as
// torch.cumsum, so the reference and this kernel draw the same row from the same uniform).
//
// Pruning (exact): as in k-center, row i with center a is skipped when the computed squared
// center distance D2 = d^2(a, c) satisfies D2 >= 4 r2 + 5 E. Here the formula's rounding error is
// absolute: every computed squared distance among rows i, a, c is within E = 8 gamma (G_i + G_a +
// G_c) of the true one (gamma = (C + d + 8) eps bounds both dot products). Then true d(a, c) >=
// sqrt(D2 - E) >= 2 sqrt(r2 + E) >= 2 true d(i, a) + ... , so true d^2(i, c) >= r2 + E and the
// computed d^2(i, c) >= r2: the unpruned update would not have changed the row either.
// A row that survives is tested once more after a_i . a_c, before its features are read
// (Embedding::cannot_lower, Cauchy-Schwarz on h): different predicted classes make a_i . a_c small,
// so most rows skip the d-long half of the work (the Triton kernel does the same on the GPU).
#include "cpu/common.h"

#include <cmath>
#include <vector>

namespace mqnet_fast {
namespace {

template <typename T>
struct Embedding {
  const T* a;      // (N, C) onehot - p
  const T* h;      // (N, d)
  const T* g;      // (N,)  |a|^2 |h|^2
  const T* hnorm;  // (N,)  |h|
  int64_t classes, dim;

  T class_dot(int64_t i, int64_t j) const { return dot(a + i * classes, a + j * classes, classes); }

  // The operation order matches the PyTorch reference (no contraction: see setup.py flags),
  // so a row and its exact duplicate are at distance exactly 0 in both.
  T sqdist(int64_t i, int64_t j, T ad) const {
    const T hd = dot(h + i * dim, h + j * dim, dim);
    const T v = (g[i] + g[j]) - 2 * (ad * hd);
    return v > 0 ? v : T(0);
  }
  T sqdist(int64_t i, int64_t j) const { return sqdist(i, j, class_dot(i, j)); }

  // Cauchy-Schwarz: |h_i . h_c| <= |h_i| |h_c|, so sqdist(i, c) >= G_i + G_c - 2 |a_i . a_c| |h_i| |h_c|.
  // True when that bound, less `slack` for the rounding of both dot products, the norms and the
  // final additions, reaches r2: the computed distance could not lower r2, and h_i need not be read.
  bool cannot_lower(int64_t i, int64_t c, T ad, T r2, T slack) const {
    const T reach = 2 * std::abs(ad) * (hnorm[i] * hnorm[c]) * (1 + slack);
    return (g[i] + g[c]) - reach - slack * (g[i] + g[c] + reach) >= r2;
  }
};

// First row whose float64 running sum of D^2 exceeds u * total (torch.searchsorted(..., right=True)
// on torch.cumsum); the last positive row if rounding puts the target at the total; the lowest
// unpicked row when every D^2 is 0.
template <typename T>
int64_t sample_d2(const T* d2, const std::vector<uint8_t>& picked, double u) {
  const int64_t n = picked.size();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += (double)d2[i];
  if (total == 0) {
    for (int64_t i = 0; i < n; ++i)
      if (!picked[i]) return i;
    return -1;
  }
  const double target = u * total;
  double acc = 0;
  int64_t last_positive = -1;
  for (int64_t i = 0; i < n; ++i) {
    acc += (double)d2[i];
    if (d2[i] > 0) last_positive = i;
    if (acc > target) return i;
  }
  return last_positive;
}

template <typename T>
at::Tensor badge_kmeanspp_kernel(const at::Tensor& probs_in, const at::Tensor& feats_in, int64_t k,
                                 const at::Tensor& uniforms_in) {
  const int64_t n = probs_in.size(0), classes = probs_in.size(1), dim = feats_in.size(1);
  const at::Tensor probs = probs_in.contiguous();
  const at::Tensor feats = feats_in.contiguous();
  const at::Tensor predicted = probs.argmax(1);
  const at::Tensor a_t = at::one_hot(predicted, classes).to(probs.scalar_type()) - probs;
  // G with the same dot() as the cross terms, so that d^2(i, i) is exactly 0.
  at::Tensor g_t = at::empty({n}, probs.options());
  at::Tensor hnorm_t = at::empty({n}, probs.options());
  {
    const T* a = a_t.data_ptr<T>();
    const T* h = feats.data_ptr<T>();
    T* g = g_t.data_ptr<T>();
    T* hnorm = hnorm_t.data_ptr<T>();
    at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T h2 = dot(h + i * dim, h + i * dim, dim);
        g[i] = dot(a + i * classes, a + i * classes, classes) * h2;
        hnorm[i] = std::sqrt(h2);
      }
    });
  }
  const at::Tensor uniforms = uniforms_in.to(at::kDouble).contiguous();
  const Embedding<T> emb{a_t.data_ptr<T>(), feats.data_ptr<T>(), g_t.data_ptr<T>(), hnorm_t.data_ptr<T>(),
                         classes, dim};
  const T gamma = (classes + dim + 8) * std::numeric_limits<T>::epsilon();
  const T slack = (2 * dim + classes + 32) * std::numeric_limits<T>::epsilon();
  const double* up = uniforms.data_ptr<double>();

  at::Tensor picks_t = at::empty({k}, probs.options().dtype(at::kLong));
  int64_t* picks = picks_t.data_ptr<int64_t>();
  if (k == 0) return picks_t;
  std::vector<T> d2(n, std::numeric_limits<T>::infinity());
  std::vector<int64_t> assign(n, -1);
  std::vector<uint8_t> picked(n, 0);
  std::vector<int64_t> centers;
  std::vector<T> center_d2;
  const int64_t chunks = num_chunks(n);

  for (int64_t step = 0; step < k; ++step) {
    const int64_t c = step == 0 ? g_t.argmax().item<int64_t>() : sample_d2(d2.data(), picked, up[step - 1]);
    picks[step] = c;
    picked[c] = 1;
    if (step == k - 1) break;
    const int64_t m = centers.size();
    centers.push_back(c);
    const bool prune = m > 0 && 2 * m <= n;
    if (prune) {
      center_d2.resize(m);
      at::parallel_for(0, m, 64, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) center_d2[j] = emb.sqdist(centers[j], c);
      });
    }
    const T gc = emb.g[c];
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b * kRowChunk; i < std::min(n, e * kRowChunk); ++i) {
        const T r2 = d2[i];
        const int64_t ai = assign[i];
        if (prune && ai >= 0) {
          const T bound = 8 * gamma * (emb.g[i] + emb.g[centers[ai]] + gc);
          if (center_d2[ai] >= 4 * r2 + 5 * bound) continue;
        }
        const T ad = emb.class_dot(i, c);
        if (emb.cannot_lower(i, c, ad, r2, slack)) continue;
        const T v = emb.sqdist(i, c, ad);
        if (v < r2) {
          d2[i] = v;
          assign[i] = m;
        }
      }
    });
    d2[c] = 0;
  }
  return picks_t;
}

at::Tensor badge_kmeanspp_cpu(const at::Tensor& probs, const at::Tensor& feats, int64_t k,
                              const at::Tensor& uniforms) {
  check_float_matrix(probs, "probs");
  check_float_matrix(feats, "feats");
  TORCH_CHECK(probs.size(0) == feats.size(0), "probs and feats must have the same number of rows, got ",
              probs.size(0), " and ", feats.size(0));
  TORCH_CHECK(probs.scalar_type() == feats.scalar_type(), "probs and feats must share a dtype, got ",
              probs.scalar_type(), " and ", feats.scalar_type());
  TORCH_CHECK(k >= 0 && k <= probs.size(0), "k must be in [0, N=", probs.size(0), "], got ", k);
  TORCH_CHECK(uniforms.dim() == 1 && uniforms.numel() == std::max<int64_t>(k - 1, 0),
              "uniforms must have shape (k - 1,) = (", std::max<int64_t>(k - 1, 0), ",), got ",
              uniforms.sizes());
  return AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "badge_kmeanspp_cpu", [&] {
    return badge_kmeanspp_kernel<scalar_t>(probs, feats, k, uniforms);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("badge_kmeanspp", &badge_kmeanspp_cpu); }

}  // namespace mqnet_fast
