// Scalar sigmoid written so that loops over it vectorize (shared by the MLP kernels).
#pragma once
#include <cmath>
#include <cstdint>

namespace mqnet_fast {

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

}  // namespace mqnet_fast
