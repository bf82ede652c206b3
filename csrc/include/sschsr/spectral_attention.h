// Spectral (channel) attention: torch-free kernel API and the inline math shared by the CPU and CUDA kernels.
//
// Per head h with c = C/heads channels (rows of the B×C×(H·W) maps q, k, v):
//     A_h = softmax_j( gram_ij / (max(‖q_i‖, 1e-12) · max(‖k_j‖, 1e-12)) · τ_h ),   out_i = Σ_j A_h[i][j] · v_j
// where gram_ij = Σ_p q_i(p) k_j(p) and ‖·‖ is the L2 norm over the pixels. This equals softmax(q̂ k̂ᵀ τ) v with
// q̂, k̂ L2-normalised along the pixels (the official MDTA), but the normalised q̂ and k̂ are never materialised:
// one pass over the pixels accumulates gram and the squared norms, the division happens on the c×c matrix.
//
// The statistics (gram, Σq², Σk²) are plain sums over pixels, so they add across spatial tiles: a tiled runtime sums
// per-tile statistics and then calls attention_softmax_row() once per row.
//
// This header also holds the 16-bit float storage helpers (IEEE half and bfloat16 as raw bits) used by both this op
// and patch matching, so the CPU kernels can read and write fp16/bf16 tensors without torch.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "sschsr/common.h"

// The CUDA launchers are declared where the CUDA runtime headers are visible (CUDA translation units, and host code
// of CUDA builds that has the toolkit on its include path).
#if defined(__CUDACC__) || (defined(SSCHSR_WITH_CUDA) && __has_include(<cuda_runtime_api.h>))
#include <cuda_runtime_api.h>
#define SSCHSR_CUDA_API_VISIBLE 1
#endif

namespace sschsr {
namespace storage {

// Element type of a tensor handed to a kernel through a void pointer.
enum class Dtype : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// Raw 16-bit storage types (same size and alignment as c10::Half / __half and c10::BFloat16 / __nv_bfloat16).
struct half_t {
  std::uint16_t bits;
};
struct bfloat16_t {
  std::uint16_t bits;
};

SSCHSR_INLINE float bits_to_float(std::uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

SSCHSR_INLINE std::uint32_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

// IEEE binary16 → binary32 (exact: every half value is a float).
SSCHSR_INLINE float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // Subnormal half: shift the mantissa up until its leading one reaches the implicit position.
    exp = 127 - 15 + 1;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    mant &= 0x3ffu;
    return bits_to_float(sign | (exp << 23) | (mant << 13));
  }
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// binary32 → binary16, round to nearest even (what torch's .half() does); overflow gives ±inf, nan stays nan.
SSCHSR_INLINE std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_to_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // ≥ 65520 rounds to inf
  if (ax < 0x38800000u) {                                                     // below 2^-14: half subnormal or zero
    if (ax < 0x33000000u) return static_cast<std::uint16_t>(sign);            // ≤ 2^-25 (a tie) rounds to 0
    const std::uint32_t e = ax >> 23;
    const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;  // may carry into the smallest normal: still right
    return static_cast<std::uint16_t>(sign | r);
  }
  std::uint32_t v = (ax >> 13) - (112u << 10);
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) ++v;
  return static_cast<std::uint16_t>(sign | v);
}

SSCHSR_INLINE float bf16_bits_to_float(std::uint16_t b) { return bits_to_float(static_cast<std::uint32_t>(b) << 16); }

// binary32 → bfloat16, round to nearest even; nan stays a (quiet) nan.
SSCHSR_INLINE std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Uniform load / store of one element as the accumulation type S (float or double).
template <typename S>
SSCHSR_INLINE S load_as(float v) { return static_cast<S>(v); }
template <typename S>
SSCHSR_INLINE S load_as(double v) { return static_cast<S>(v); }
template <typename S>
SSCHSR_INLINE S load_as(half_t v) { return static_cast<S>(half_bits_to_float(v.bits)); }
template <typename S>
SSCHSR_INLINE S load_as(bfloat16_t v) { return static_cast<S>(bf16_bits_to_float(v.bits)); }

template <typename T>
struct StoreAs;
template <>
struct StoreAs<float> {
  template <typename S>
  SSCHSR_HOST_DEVICE static float from(S v) { return static_cast<float>(v); }
};
template <>
struct StoreAs<double> {
  template <typename S>
  SSCHSR_HOST_DEVICE static double from(S v) { return static_cast<double>(v); }
};
template <>
struct StoreAs<half_t> {
  template <typename S>
  SSCHSR_HOST_DEVICE static half_t from(S v) { return half_t{float_to_half_bits(static_cast<float>(v))}; }
};
template <>
struct StoreAs<bfloat16_t> {
  template <typename S>
  SSCHSR_HOST_DEVICE static bfloat16_t from(S v) { return bfloat16_t{float_to_bf16_bits(static_cast<float>(v))}; }
};

}  // namespace storage

namespace spectral {

using storage::Dtype;

// Clamp of the L2 norms (F.normalize's eps in the official MDTA).
constexpr double kL2Eps = 1e-12;

// q, k, v (and out) are contiguous batch × channels × pixels; channels = heads · c.
struct AttentionShape {
  index_t batch;
  index_t channels;
  index_t pixels;
  index_t heads;
};

// Precision-preserving overloads usable on host and device (plain sqrt/exp would promote float to double on the host).
SSCHSR_INLINE float math_sqrt(float x) { return sqrtf(x); }
SSCHSR_INLINE double math_sqrt(double x) { return sqrt(x); }
SSCHSR_INLINE float math_exp(float x) { return expf(x); }
SSCHSR_INLINE double math_exp(double x) { return exp(x); }

// One softmax row of the attention matrix from the accumulated statistics:
//   a[j] = softmax_j( gram_row[j] / (max(√q_sq_i, eps) · max(√k_sq[j], eps)) · tau ),  j < c.
// S is float (fp32/fp16/bf16 inputs) or double (fp64 inputs). Shared by the CPU and CUDA kernels.
template <typename S>
SSCHSR_INLINE void attention_softmax_row(const S* gram_row, S q_sq_i, const S* k_sq, S tau, index_t c, S* a) {
  const S eps = static_cast<S>(kL2Eps);
  S qn = math_sqrt(q_sq_i);
  qn = qn > eps ? qn : eps;
  S row_max = -static_cast<S>(INFINITY);
  for (index_t j = 0; j < c; ++j) {
    S kn = math_sqrt(k_sq[j]);
    kn = kn > eps ? kn : eps;
    const S logit = gram_row[j] / (qn * kn) * tau;
    a[j] = logit;
    row_max = logit > row_max ? logit : row_max;
  }
  S total = 0;
  for (index_t j = 0; j < c; ++j) {
    const S e = math_exp(a[j] - row_max);
    a[j] = e;
    total += e;
  }
  const S inv = static_cast<S>(1) / total;
  for (index_t j = 0; j < c; ++j) a[j] *= inv;
}

// ---- CPU (C++17 + OpenMP) ------------------------------------------------------------------------------------------
// Statistics type S: double for Dtype::f64, float otherwise (fp16/bf16 inputs keep fp32 statistics).

// gram: batch × heads × c × c; q_sq, k_sq: batch × channels. Plain sums over all pixels (add across tiles).
void gram_and_norms_cpu(Dtype dtype, const void* q, const void* k, const AttentionShape& shape, void* gram, void* q_sq,
                        void* k_sq);

// out = softmax(q̂ k̂ᵀ τ) v per head; temperature: `heads` values of the statistics type S; out has q's dtype.
void spectral_attention_cpu(Dtype dtype, const void* q, const void* k, const void* v, const void* temperature,
                            const AttentionShape& shape, void* out);

// ---- CUDA (unverified on hardware) ---------------------------------------------------------------------------------
#ifdef SSCHSR_CUDA_API_VISIBLE
// Bytes of device scratch memory the CUDA launchers below need (partial statistics per pixel split + the attention
// matrices); the caller allocates it (e.g. with the torch caching allocator) and passes it in.
std::size_t spectral_attention_cuda_workspace_bytes(Dtype dtype, const AttentionShape& shape);

// Same contracts as the CPU functions; every pointer is device memory; kernels are launched on `stream`.
// Returns cudaGetLastError() after the launches.
cudaError_t gram_and_norms_cuda(Dtype dtype, const void* q, const void* k, const AttentionShape& shape, void* gram,
                                void* q_sq, void* k_sq, void* workspace, cudaStream_t stream);
cudaError_t spectral_attention_cuda(Dtype dtype, const void* q, const void* k, const void* v, const void* temperature,
                                    const AttentionShape& shape, void* out, void* workspace, cudaStream_t stream);
#endif

}  // namespace spectral
}  // namespace sschsr
