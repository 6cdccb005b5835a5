// Fused non-negative MLP scoring (MQ-Net's Phi) on the CPU: standardize -> relu(W) layers with a
// sigmoid between them -> one score per row, on blocks of rows held in cache (layout [unit][row],
// so every inner loop runs over rows and vectorizes).
#include "cpu/common.h"
#include "cpu/isa.h"
#include "cpu/sigmoid.h"

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(MQNET_FAST_X86)
#include <immintrin.h>
#endif

namespace mqnet_fast {
namespace {

constexpr int64_t kBlock = 256;  // rows per block

#if defined(MQNET_FAST_X86)
// MQ-Net's shape (2 inputs -> one sigmoid layer -> score) with AVX-512, 16 rows at a time with the
// two inputs and the score in registers across all hidden units (the weights are broadcast from a
// small table). Fewer instructions than the portable path:
// - e^-x = 2^t with t = -x log2(e); the factor is folded into each unit's weights and bias, so t
//   comes out of the two FMAs directly (the folded coefficients round once more: |dt| ~ 1e-7 |t|,
//   which moves the sigmoid by at most ~2.5e-8 |x| -- far inside the float tolerance);
// - 2^t = 2^n 2^f with n = round(t), f = t - n in [-1/2, 1/2] exact, 2^f by a degree-5 polynomial
//   fitted for least maximal relative error on [-1/2, 1/2] (Lawson-reweighted least squares on
//   Chebyshev nodes: 7.5e-8 in exact arithmetic, 2.3e-7 evaluated in float32), 2^n applied by scalef;
// - 1 / (1 + 2^t) from rcp14 (relative error < 2^-14) and one Newton step (~2^-28, plus rounding).
// t is clamped above at 115 (x below at about -80, as in the portable path) so 1 + 2^t stays finite
// and its reciprocal normal; below, 2^t underflows to 0 and the sigmoid is exactly 1.
// The AVX2 path (16 rows at a time, as two groups of 8) computes the same steps with what AVX2 has:
// 2^n built from its exponent bits (t clamped below at -126 so that 2^n stays a normal float; 1 +
// 2^t is then 1 exactly, as when scalef underflows), and rcp (relative error < 1.5 * 2^-12) with
// one Newton step (~2^-22.8, about float32 rounding; the sigmoid moves by < 2e-7). Both are chosen
// at run time (cpu/isa.h); the portable loop below is the fallback.
constexpr float kExp2Coeffs[6] = {1.0000001192092896f, 0.6931469440460205f, 0.24022120237350464f,
                                  0.05550713092088699f, 0.009675540961325169f, 0.001327647129073739f};  // c0..c5
constexpr float kMaxExponent = 115.0f;  // t's clamp above (both paths)

struct FoldedUnits {
  std::vector<float> a0, a1, b, out;  // -w0 log2e, -w1 log2e, -bias log2e, relu(w_out) per unit
};

inline FoldedUnits fold_units(const float* w, const float* bias, const float* w_out, int64_t units) {
  constexpr float kLog2e = 1.44269504088896341f;
  FoldedUnits f;
  for (int64_t j = 0; j < units; ++j) {
    f.a0.push_back(-w[j * 2] * kLog2e);
    f.a1.push_back(-w[j * 2 + 1] * kLog2e);
    f.b.push_back(-bias[j] * kLog2e);
    f.out.push_back(w_out[j]);
  }
  return f;
}

// Scores `rows` rows of z (interleaved (rows, 2), standardized here when scale != nullptr) into out.
__attribute__((target("avx512f"))) void score_rows_avx512(const float* z, int64_t rows, const float* shift,
                                                           const float* scale, const FoldedUnits& f,
                                                           float out_bias, float* out) {
  const __m512 hi = _mm512_set1_ps(kMaxExponent), one = _mm512_set1_ps(1.0f);
  const __m512 c5 = _mm512_set1_ps(kExp2Coeffs[5]), c4 = _mm512_set1_ps(kExp2Coeffs[4]);
  const __m512 c3 = _mm512_set1_ps(kExp2Coeffs[3]), c2 = _mm512_set1_ps(kExp2Coeffs[2]);
  const __m512 c1 = _mm512_set1_ps(kExp2Coeffs[1]), c0 = _mm512_set1_ps(kExp2Coeffs[0]);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const int64_t units = static_cast<int64_t>(f.out.size());
  for (int64_t r = 0; r < rows; r += 16) {
    const int64_t left = std::min<int64_t>(16, rows - r);
    const __mmask16 m_lo = left >= 8 ? 0xFFFF : static_cast<__mmask16>((1u << (2 * left)) - 1);
    const __mmask16 m_hi = left <= 8 ? 0 : static_cast<__mmask16>((1u << (2 * (left - 8))) - 1);
    const __m512 lo = _mm512_maskz_loadu_ps(m_lo, z + 2 * r);
    const __m512 hi_half = _mm512_maskz_loadu_ps(m_hi, z + 2 * r + 16);
    __m512 x0 = _mm512_permutex2var_ps(lo, even, hi_half), x1 = _mm512_permutex2var_ps(lo, odd, hi_half);
    if (scale != nullptr) {  // (z - mean) / std, as the reference rounds it
      x0 = _mm512_div_ps(_mm512_sub_ps(x0, _mm512_set1_ps(shift[0])), _mm512_set1_ps(scale[0]));
      x1 = _mm512_div_ps(_mm512_sub_ps(x1, _mm512_set1_ps(shift[1])), _mm512_set1_ps(scale[1]));
    }
    __m512 acc = _mm512_set1_ps(out_bias);
    for (int64_t j = 0; j < units; ++j) {
      __m512 t = _mm512_fmadd_ps(_mm512_set1_ps(f.a1[j]), x1,
                                 _mm512_fmadd_ps(_mm512_set1_ps(f.a0[j]), x0, _mm512_set1_ps(f.b[j])));
      t = _mm512_min_ps(t, hi);
      const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 fr = _mm512_sub_ps(t, n);
      __m512 p = _mm512_fmadd_ps(c5, fr, c4);
      p = _mm512_fmadd_ps(p, fr, c3);
      p = _mm512_fmadd_ps(p, fr, c2);
      p = _mm512_fmadd_ps(p, fr, c1);
      p = _mm512_fmadd_ps(p, fr, c0);
      const __m512 d = _mm512_add_ps(one, _mm512_scalef_ps(p, n));
      __m512 y = _mm512_rcp14_ps(d);
      y = _mm512_fmadd_ps(y, _mm512_fnmadd_ps(d, y, one), y);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(f.out[j]), y, acc);
    }
    _mm512_mask_storeu_ps(out + r, static_cast<__mmask16>((1u << left) - 1), acc);
  }
}

// Rows 0-3 interleaved in a, rows 4-7 in b -> x0, x1 of the 8 rows in order: the shuffles give rows
// 0 1 4 5 | 2 3 6 7 and the 64-bit permute puts them in order.
__attribute__((target("avx2,fma"))) inline void deinterleave8(const float* src, __m256& x0, __m256& x1) {
  const __m256 a = _mm256_loadu_ps(src), b = _mm256_loadu_ps(src + 8);
  const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  x0 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
  x1 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0)));
}

// One hidden unit's sigmoid on 8 rows, as 1 / (1 + 2^t) (see the AVX-512 path). 2^n comes from the
// shifter 1.5 * 2^23 + 127: t + shifter rounds t to the nearest integer n, held in the low bits with
// the exponent bias already added, so shifting those bits by 23 is 2^n (the 1.5 * 2^23 part leaves
// through the top), and subtracting the shifter gives n exactly.
__attribute__((target("avx2,fma"))) inline __m256 sigmoid_unit8(__m256 t) {
  const __m256 shifter = _mm256_set1_ps(12583039.0f);  // 1.5 * 2^23 + 127
  t = _mm256_max_ps(_mm256_min_ps(t, _mm256_set1_ps(kMaxExponent)), _mm256_set1_ps(-126.0f));
  const __m256 shifted = _mm256_add_ps(t, shifter);
  const __m256 fr = _mm256_sub_ps(t, _mm256_sub_ps(shifted, shifter));
  __m256 p = _mm256_set1_ps(kExp2Coeffs[5]);
  for (int c = 4; c >= 0; --c) p = _mm256_fmadd_ps(p, fr, _mm256_set1_ps(kExp2Coeffs[c]));
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(shifted), 23));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 d = _mm256_fmadd_ps(p, pow2n, one);
  const __m256 y = _mm256_rcp_ps(d);
  return _mm256_fmadd_ps(y, _mm256_fnmadd_ps(d, y, one), y);  // one Newton step: ~2^-22.8 relative
}

__attribute__((target("avx2,fma"))) void score_rows_avx2(const float* z, int64_t rows, const float* shift,
                                                          const float* scale, const FoldedUnits& f,
                                                          float out_bias, float* out) {
  const int64_t units = static_cast<int64_t>(f.out.size());
  for (int64_t r = 0; r < rows; r += 16) {  // two groups of 8 rows share each unit's broadcasts
    const int64_t left = std::min<int64_t>(16, rows - r);
    alignas(32) float in[32] = {0}, res[16];
    const float* src = z + 2 * r;
    if (left < 16) {
      std::memcpy(in, src, sizeof(float) * 2 * left);
      src = in;
    }
    __m256 x0a, x1a, x0b, x1b;
    deinterleave8(src, x0a, x1a);
    deinterleave8(src + 16, x0b, x1b);
    if (scale != nullptr) {  // (z - mean) / std, as the reference rounds it
      const __m256 m0 = _mm256_set1_ps(shift[0]), m1 = _mm256_set1_ps(shift[1]);
      const __m256 s0 = _mm256_set1_ps(scale[0]), s1 = _mm256_set1_ps(scale[1]);
      x0a = _mm256_div_ps(_mm256_sub_ps(x0a, m0), s0);
      x1a = _mm256_div_ps(_mm256_sub_ps(x1a, m1), s1);
      x0b = _mm256_div_ps(_mm256_sub_ps(x0b, m0), s0);
      x1b = _mm256_div_ps(_mm256_sub_ps(x1b, m1), s1);
    }
    __m256 acc_a = _mm256_set1_ps(out_bias), acc_b = acc_a;
    for (int64_t j = 0; j < units; ++j) {
      const __m256 a0 = _mm256_set1_ps(f.a0[j]), a1 = _mm256_set1_ps(f.a1[j]), b = _mm256_set1_ps(f.b[j]);
      const __m256 w = _mm256_set1_ps(f.out[j]);
      acc_a = _mm256_fmadd_ps(w, sigmoid_unit8(_mm256_fmadd_ps(a1, x1a, _mm256_fmadd_ps(a0, x0a, b))), acc_a);
      acc_b = _mm256_fmadd_ps(w, sigmoid_unit8(_mm256_fmadd_ps(a1, x1b, _mm256_fmadd_ps(a0, x0b, b))), acc_b);
    }
    if (left == 16) {
      _mm256_storeu_ps(out + r, acc_a);
      _mm256_storeu_ps(out + r + 8, acc_b);
    } else {
      _mm256_store_ps(res, acc_a);
      _mm256_store_ps(res + 8, acc_b);
      std::memcpy(out + r, res, sizeof(float) * left);
    }
  }
}
#endif

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

#if defined(MQNET_FAST_X86)
  const CpuIsa isa = cpu_isa();
  const bool mqnet_shape = std::is_same_v<T, float> && layers == 2 && k == 2 && isa != CpuIsa::kGeneric;
  FoldedUnits folded;
  if constexpr (std::is_same_v<T, float>) {
    if (mqnet_shape)
      folded = fold_units(weights[0].data_ptr<float>(), biases[0].data_ptr<float>(), weights[1].data_ptr<float>(),
                          weights[0].size(0));
  }
#endif
  // The last layer (one output) is fused into the layer before it: each hidden unit's sigmoid is
  // accumulated into the score right away instead of being stored and read back.
  at::parallel_for(0, num_chunks(n, kBlock), 16, [&](int64_t b, int64_t e) {
    std::vector<T> cur(widest * kBlock), next(widest * kBlock);
    T score[kBlock];
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t r0 = blk * kBlock, rows = std::min(kBlock, n - r0);
#if defined(MQNET_FAST_X86)
      if constexpr (std::is_same_v<T, float>) {
        if (mqnet_shape) {
          const auto rows_fn = isa == CpuIsa::kAvx512 ? score_rows_avx512 : score_rows_avx2;
          rows_fn(zp + r0 * 2, rows, standardize ? shift.data() : nullptr, standardize ? scale.data() : nullptr,
                  folded, biases[1].data_ptr<float>()[0], op + r0);
          continue;
        }
      }
#endif
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
