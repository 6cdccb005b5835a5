// Fused non-negative MLP scoring (MQ-Net's Phi) on the CPU: standardize -> relu(W) layers with a
// sigmoid between them -> one score per row, on blocks of rows held in cache (layout [unit][row],
// so every inner loop runs over rows and vectorizes).
#include "cpu/common.h"

#include <cmath>
#include <vector>

namespace mqnet_fast {
namespace {

constexpr int64_t kBlock = 256;  // rows per block

// exp for float on [-87.3, 88.7]: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2],
// ln2 split in two parts for an exact reduction and a degree-6 polynomial (Cephes expf
// coefficients), about 1 ulp. Written without calls so that the row loop vectorizes (which also
// needs -fno-trapping-math for the float -> int conversion; see setup.py).
inline float exp_float(float x) {  // x in [-87.3, 88.7]
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = std::fma(n, 2.12194440e-4f, std::fma(n, -0.693359375f, x));
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p * r, r, r + 1.0f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

// 1 / (1 + e^-x) without a division (the vector divide costs more than the whole exp): a bit-trick
// first guess of the reciprocal refined by three Newton steps (relative error 12% -> ~4e-8).
// x is clamped to [-80, 80] so that 1 + e^-x and its reciprocal stay normal floats; the error this
// adds at |x| > 80 is below 2e-35.
inline float sigmoid(float x) {
  x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x);
  const float d = 1.0f + exp_float(-x);
  float y = __builtin_bit_cast(float, 0x7EF311C3 - __builtin_bit_cast(int32_t, d));
  y = std::fma(y, std::fma(-d, y, 1.0f), y);
  y = std::fma(y, std::fma(-d, y, 1.0f), y);
  y = std::fma(y, std::fma(-d, y, 1.0f), y);
  return y;
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
at::Tensor nonneg_mlp_score_kernel(const at::Tensor& z_in, at::TensorList weights_in,
                                   at::TensorList biases_in, const c10::optional<at::Tensor>& mean,
                                   const c10::optional<at::Tensor>& std_) {
  const at::Tensor z = z_in.contiguous();
  const int64_t n = z.size(0), k = z.size(1);
  const int64_t layers = weights_in.size();
  std::vector<at::Tensor> weights, biases;  // relu(W), contiguous, in z's dtype
  int64_t widest = k;
  for (int64_t l = 0; l < layers; ++l) {
    weights.push_back(weights_in[l].to(z.scalar_type()).clamp_min(0).contiguous());
    biases.push_back(biases_in[l].to(z.scalar_type()).contiguous());
    widest = std::max(widest, weights_in[l].size(0));
  }
  std::vector<T> shift(k, 0), scale(k, 1);
  const bool standardize = mean.has_value();
  if (standardize) {
    const at::Tensor mu = mean->to(at::kDouble).contiguous(), sd = std_->to(at::kDouble).contiguous();
    for (int64_t c = 0; c < k; ++c) {
      shift[c] = static_cast<T>(mu.data_ptr<double>()[c]);
      scale[c] = static_cast<T>(sd.data_ptr<double>()[c]);
    }
  }
  at::Tensor out = at::empty({n}, z.options());
  T* op = out.data_ptr<T>();
  const T* zp = z.data_ptr<T>();

  // The last layer (one output) is fused into the layer before it: each hidden unit's sigmoid is
  // accumulated into the score right away instead of being stored and read back.
  at::parallel_for(0, num_chunks(n, kBlock), 16, [&](int64_t b, int64_t e) {
    std::vector<T> cur(widest * kBlock), next(widest * kBlock);
    T score[kBlock];
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t r0 = blk * kBlock, rows = std::min(kBlock, n - r0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < k; ++c) {
          const T v = zp[(r0 + r) * k + c];
          cur[c * kBlock + r] = standardize ? (v - shift[c]) / scale[c] : v;
        }
      const T* w_last = weights[layers - 1].data_ptr<T>();
      for (int64_t r = 0; r < kBlock; ++r) score[r] = biases[layers - 1].data_ptr<T>()[0];
      int64_t width = k;
      if (layers == 1) {
        for (int64_t c = 0; c < width; ++c) {
          const T* src = cur.data() + c * kBlock;
#pragma omp simd
          for (int64_t r = 0; r < kBlock; ++r) score[r] = std::fma(w_last[c], src[r], score[r]);
        }
      }
      for (int64_t l = 0; l + 1 < layers; ++l) {
        const int64_t units = weights[l].size(0);
        const T* w = weights[l].data_ptr<T>();
        const T* bias = biases[l].data_ptr<T>();
        const bool into_score = l + 2 == layers;
        for (int64_t j = 0; j < units; ++j) {
          T acc[kBlock];
          if (width == 2) {  // MQ-Net's <P, I>: one pass instead of three
            const T w0 = w[j * 2], w1 = w[j * 2 + 1];
            const T* src0 = cur.data();
            const T* src1 = cur.data() + kBlock;
#pragma omp simd
            for (int64_t r = 0; r < kBlock; ++r) acc[r] = std::fma(w1, src1[r], std::fma(w0, src0[r], bias[j]));
          } else {
            for (int64_t r = 0; r < kBlock; ++r) acc[r] = bias[j];
            for (int64_t c = 0; c < width; ++c) {
              const T wjc = w[j * width + c];
              const T* src = cur.data() + c * kBlock;
#pragma omp simd
              for (int64_t r = 0; r < kBlock; ++r) acc[r] = std::fma(wjc, src[r], acc[r]);
            }
          }
          if (into_score) {
            const T out_w = w_last[j];
#pragma omp simd
            for (int64_t r = 0; r < kBlock; ++r) score[r] = std::fma(out_w, sigmoid(acc[r]), score[r]);
          } else {
            T* dst = next.data() + j * kBlock;
#pragma omp simd
            for (int64_t r = 0; r < kBlock; ++r) dst[r] = sigmoid(acc[r]);
          }
        }
        std::swap(cur, next);
        width = units;
      }
      for (int64_t r = 0; r < rows; ++r) op[r0 + r] = score[r];
    }
  });
  return out;
}

at::Tensor nonneg_mlp_score_cpu(const at::Tensor& z, at::TensorList weights, at::TensorList biases,
                                const c10::optional<at::Tensor>& mean,
                                const c10::optional<at::Tensor>& std_) {
  check_float_matrix(z, "z");
  TORCH_CHECK(!weights.empty(), "weights must hold at least one layer");
  TORCH_CHECK(weights.size() == biases.size(), "weights and biases must have the same length, got ",
              weights.size(), " and ", biases.size());
  int64_t width = z.size(1);
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK(weights[l].dim() == 2 && weights[l].size(1) == width, "weights[", l,
                "] must have shape (out, ", width, "), got ", weights[l].sizes());
    TORCH_CHECK(biases[l].dim() == 1 && biases[l].size(0) == weights[l].size(0), "biases[", l,
                "] must have shape (", weights[l].size(0), ",), got ", biases[l].sizes());
    width = weights[l].size(0);
  }
  TORCH_CHECK(width == 1, "the last layer must have one output, got ", width);
  TORCH_CHECK(mean.has_value() == std_.has_value(), "mean and std must be given together");
  if (mean.has_value()) {
    TORCH_CHECK(mean->numel() == z.size(1) && std_->numel() == z.size(1),
                "mean and std must have ", z.size(1), " elements, got ", mean->numel(), " and ",
                std_->numel());
  }
  return AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "nonneg_mlp_score_cpu", [&] {
    return nonneg_mlp_score_kernel<scalar_t>(z, weights, biases, mean, std_);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("nonneg_mlp_score", &nonneg_mlp_score_cpu); }

}  // namespace mqnet_fast
