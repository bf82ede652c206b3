// Modulated deformable convolution on the CPU: tiled, OpenMP-parallel gather of modulated samples + packed GEMM.
//
// Per image: when the input is not channels-last, one NHWC copy of that image is made (so that the C/G channels of an
// offset group are contiguous and one bilinear sample of all of them is a short vector loop). The output pixels are
// cut into tiles of kTileP; each OpenMP task (tile, conv group) walks the reduction axis k = tap·Cg + c in chunks of
// about kChunkK: it gathers the modulated samples of the chunk into a per-thread row-major buffer A (kTileP × chunk)
// and multiplies it with the weights, packed once into NR-wide panels, by a register-blocked MR×NR micro-kernel that
// accumulates into a per-thread kTileP × O/groups buffer; the tile's output (+ bias) is then written NCHW.
// Memory beyond the input and output: the packed weights, one image's NHWC copy, and per thread ≈ (kTileP × (kChunkK +
// O/groups)) elements; never an im2col buffer.
//
// Micro-kernels: AVX2 + FMA intrinsics when the CPU has them (runtime dispatch, this file is compiled without -mavx2),
// a portable loop version otherwise; the whole tile routine is compiled once per instruction set so that the gather
// loops are vectorised with the wider registers too.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "sschsr/bilinear.h"
#include "sschsr/deform_conv.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SSCHSR_DCN_X86 1
#define SSCHSR_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SSCHSR_DCN_X86 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SSCHSR_ALWAYS_INLINE inline __attribute__((always_inline))
#define SSCHSR_RESTRICT __restrict__
#define SSCHSR_PREFETCH(p) __builtin_prefetch(p)
#else
#define SSCHSR_ALWAYS_INLINE inline
#define SSCHSR_RESTRICT
#define SSCHSR_PREFETCH(p) ((void)(p))
#endif

namespace sschsr {
namespace {

constexpr index_t kMR = 6;        // micro-kernel rows (output pixels)
constexpr index_t kTileP = 96;    // output pixels per task (multiple of kMR)
constexpr index_t kChunkK = 256;  // target depth of one gathered chunk of the reduction axis
constexpr index_t kPrefetch = 8;  // gather prefetch distance (output pixels)

template <typename T>
constexpr index_t kNR = 64 / static_cast<index_t>(sizeof(T));  // micro-kernel columns: 16 floats / 8 doubles

index_t round_up(index_t v, index_t m) { return (v + m - 1) / m * m; }

// 64-byte aligned, uninitialised array.
template <typename T>
struct AlignedArray {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr;
  explicit AlignedArray(index_t n) {
    const std::size_t bytes = static_cast<std::size_t>(round_up(std::max<index_t>(n, 1) * sizeof(T), 64));
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
    ptr.reset(static_cast<T*>(p));
  }
  T* get() const { return ptr.get(); }
};

// ---------------------------------------------------------------------------------------------------------------
// Micro-kernels: C[kMR × NR] (+)= A[kMR × kc] · B[kc × NR]. A row-major with row stride lda; B packed (NR contiguous
// values per k); C row-major with row stride ldc. accumulate = false overwrites C.

template <typename T>
struct MicroGeneric {
  static SSCHSR_ALWAYS_INLINE void run(index_t kc, const T* SSCHSR_RESTRICT a, index_t lda,
                                       const T* SSCHSR_RESTRICT b, T* SSCHSR_RESTRICT c, index_t ldc,
                                       bool accumulate) {
    constexpr index_t NR = kNR<T>;
    T acc[kMR][NR];
    for (index_t i = 0; i < kMR; ++i)
      for (index_t j = 0; j < NR; ++j) acc[i][j] = accumulate ? c[i * ldc + j] : T(0);
    for (index_t k = 0; k < kc; ++k) {
      const T* bk = b + k * NR;
      for (index_t i = 0; i < kMR; ++i) {
        const T av = a[i * lda + k];
        for (index_t j = 0; j < NR; ++j) acc[i][j] += av * bk[j];
      }
    }
    for (index_t i = 0; i < kMR; ++i)
      for (index_t j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
  }
};

#if SSCHSR_DCN_X86
template <typename T>
struct MicroAvx2;

// 6 × 16 floats: 12 accumulators, 2 B vectors and 1 broadcast = 15 of the 16 ymm registers.
template <>
struct MicroAvx2<float> {
  SSCHSR_TARGET_AVX2 static inline void run(index_t kc, const float* SSCHSR_RESTRICT a, index_t lda,
                                            const float* SSCHSR_RESTRICT b, float* SSCHSR_RESTRICT c, index_t ldc,
                                            bool accumulate) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (accumulate) {
      c00 = _mm256_loadu_ps(c + 0 * ldc), c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
      c10 = _mm256_loadu_ps(c + 1 * ldc), c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
      c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
      c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
      c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
      c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
      c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
    const float* a0 = a;
    const float* a1 = a + lda;
    const float* a2 = a + 2 * lda;
    const float* a3 = a + 3 * lda;
    const float* a4 = a + 4 * lda;
    const float* a5 = a + 5 * lda;
    for (index_t k = 0; k < kc; ++k, b += 16) {
      const __m256 b0 = _mm256_loadu_ps(b);
      const __m256 b1 = _mm256_loadu_ps(b + 8);
      __m256 x = _mm256_broadcast_ss(a0 + k);
      c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
      x = _mm256_broadcast_ss(a1 + k);
      c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
      x = _mm256_broadcast_ss(a2 + k);
      c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
      x = _mm256_broadcast_ss(a3 + k);
      c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
      x = _mm256_broadcast_ss(a4 + k);
      c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
      x = _mm256_broadcast_ss(a5 + k);
      c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    _mm256_storeu_ps(c + 0 * ldc, c00), _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10), _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
  }
};

// 6 × 8 doubles.
template <>
struct MicroAvx2<double> {
  SSCHSR_TARGET_AVX2 static inline void run(index_t kc, const double* SSCHSR_RESTRICT a, index_t lda,
                                            const double* SSCHSR_RESTRICT b, double* SSCHSR_RESTRICT c, index_t ldc,
                                            bool accumulate) {
    __m256d c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (accumulate) {
      c00 = _mm256_loadu_pd(c + 0 * ldc), c01 = _mm256_loadu_pd(c + 0 * ldc + 4);
      c10 = _mm256_loadu_pd(c + 1 * ldc), c11 = _mm256_loadu_pd(c + 1 * ldc + 4);
      c20 = _mm256_loadu_pd(c + 2 * ldc), c21 = _mm256_loadu_pd(c + 2 * ldc + 4);
      c30 = _mm256_loadu_pd(c + 3 * ldc), c31 = _mm256_loadu_pd(c + 3 * ldc + 4);
      c40 = _mm256_loadu_pd(c + 4 * ldc), c41 = _mm256_loadu_pd(c + 4 * ldc + 4);
      c50 = _mm256_loadu_pd(c + 5 * ldc), c51 = _mm256_loadu_pd(c + 5 * ldc + 4);
    } else {
      c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_pd();
    }
    const double* a0 = a;
    const double* a1 = a + lda;
    const double* a2 = a + 2 * lda;
    const double* a3 = a + 3 * lda;
    const double* a4 = a + 4 * lda;
    const double* a5 = a + 5 * lda;
    for (index_t k = 0; k < kc; ++k, b += 8) {
      const __m256d b0 = _mm256_loadu_pd(b);
      const __m256d b1 = _mm256_loadu_pd(b + 4);
      __m256d x = _mm256_broadcast_sd(a0 + k);
      c00 = _mm256_fmadd_pd(x, b0, c00), c01 = _mm256_fmadd_pd(x, b1, c01);
      x = _mm256_broadcast_sd(a1 + k);
      c10 = _mm256_fmadd_pd(x, b0, c10), c11 = _mm256_fmadd_pd(x, b1, c11);
      x = _mm256_broadcast_sd(a2 + k);
      c20 = _mm256_fmadd_pd(x, b0, c20), c21 = _mm256_fmadd_pd(x, b1, c21);
      x = _mm256_broadcast_sd(a3 + k);
      c30 = _mm256_fmadd_pd(x, b0, c30), c31 = _mm256_fmadd_pd(x, b1, c31);
      x = _mm256_broadcast_sd(a4 + k);
      c40 = _mm256_fmadd_pd(x, b0, c40), c41 = _mm256_fmadd_pd(x, b1, c41);
      x = _mm256_broadcast_sd(a5 + k);
      c50 = _mm256_fmadd_pd(x, b0, c50), c51 = _mm256_fmadd_pd(x, b1, c51);
    }
    _mm256_storeu_pd(c + 0 * ldc, c00), _mm256_storeu_pd(c + 0 * ldc + 4, c01);
    _mm256_storeu_pd(c + 1 * ldc, c10), _mm256_storeu_pd(c + 1 * ldc + 4, c11);
    _mm256_storeu_pd(c + 2 * ldc, c20), _mm256_storeu_pd(c + 2 * ldc + 4, c21);
    _mm256_storeu_pd(c + 3 * ldc, c30), _mm256_storeu_pd(c + 3 * ldc + 4, c31);
    _mm256_storeu_pd(c + 4 * ldc, c40), _mm256_storeu_pd(c + 4 * ldc + 4, c41);
    _mm256_storeu_pd(c + 5 * ldc, c50), _mm256_storeu_pd(c + 5 * ldc + 4, c51);
  }
};

bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif  // SSCHSR_DCN_X86

// ---------------------------------------------------------------------------------------------------------------
// Everything a task needs, fixed for one call (the image pointer changes per image).

template <typename T>
struct Ctx {
  // geometry
  index_t C, H, W, O, G, KH, KW, K, Cg, Og, Og_pad, cpg, Kfull, Ho, Wo, HoWo, chunk;
  index_t sh, sw, ph, pw, dh, dw;
  // the current image, read channels-last: element (c, y, x) at img[y * img_sy + x * img_sx + c]
  const T* img;
  index_t img_sy, img_sx;
  const T* offset;  // image's offsets (2·G·K, Ho, Wo)
  const T* mask;    // image's mask (G·K, Ho, Wo) or null
  const T* bias;    // (O) or null
  const T* wpack;   // [groups][Og_pad / NR][Kfull][NR]
  const T* zeros;   // cpg zeros: what corners outside the image read
  T* out;           // image's output (O, Ho, Wo)
};

// Gathers the modulated samples of reduction indices [k0, k1) (k = tap·Cg + c, c local to conv group gi) for the
// output pixels [p0, p0 + np) into a (row i, column k − k0) with row stride k1 − k0.
template <typename T>
SSCHSR_ALWAYS_INLINE void gather_chunk(const Ctx<T>& x, index_t gi, index_t p0, index_t np, index_t k0, index_t k1,
                                       const T* SSCHSR_RESTRICT base_y, const T* SSCHSR_RESTRICT base_x,
                                       T* SSCHSR_RESTRICT a) {
  const index_t kc = k1 - k0;
  for (index_t t = k0 / x.Cg; t * x.Cg < k1; ++t) {
    const index_t ti = t / x.KW;
    const index_t tj = t - ti * x.KW;
    const T tap_dy = static_cast<T>(ti * x.dh);
    const T tap_dx = static_cast<T>(tj * x.dw);
    const index_t c_begin = std::max<index_t>(k0 - t * x.Cg, 0);
    const index_t c_end = std::min<index_t>(k1 - t * x.Cg, x.Cg);
    for (index_t c = c_begin; c < c_end;) {
      const index_t cglob = gi * x.Cg + c;
      const index_t og = cglob / x.cpg;
      const index_t seg_end = std::min<index_t>(c_end, (og + 1) * x.cpg - gi * x.Cg);
      const index_t n = seg_end - c;
      const T* SSCHSR_RESTRICT off_y = x.offset + deform_conv2d_offset_channel(og, t, x.K, 0) * x.HoWo + p0;
      const T* SSCHSR_RESTRICT off_x = x.offset + deform_conv2d_offset_channel(og, t, x.K, 1) * x.HoWo + p0;
      const T* SSCHSR_RESTRICT msk =
          x.mask != nullptr ? x.mask + deform_conv2d_mask_channel(og, t, x.K) * x.HoWo + p0 : nullptr;
      const T* SSCHSR_RESTRICT img = x.img + cglob;
      T* col = a + (t * x.Cg + c - k0);
      for (index_t i = 0; i < np; ++i) {
        // The corners are scattered (learned offsets): prefetch the two rows a sample kPrefetch pixels ahead reads.
        if (i + kPrefetch < np) {
          const index_t j = i + kPrefetch;
          const T qy = base_y[j] + tap_dy + off_y[j];
          const T qx = base_x[j] + tap_dx + off_x[j];
          if (qy > T(-1) && qy < T(x.H) && qx > T(-1) && qx < T(x.W)) {
            const index_t qa = static_cast<index_t>(qy) * x.img_sy + static_cast<index_t>(qx) * x.img_sx;
            SSCHSR_PREFETCH(img + qa);
            SSCHSR_PREFETCH(img + qa + x.img_sy);
          }
        }
        T* SSCHSR_RESTRICT dst = col + i * kc;
        const T py = base_y[i] + tap_dy + off_y[i];
        const T px = base_x[i] + tap_dx + off_x[i];
        const BilinearCorners<T> s = bilinear_corners(py, px, x.H, x.W);
        if (!s.inside) {
          for (index_t j = 0; j < n; ++j) dst[j] = T(0);
          continue;
        }
        const T m = msk != nullptr ? msk[i] : T(1);
        const index_t at = static_cast<index_t>(s.y0) * x.img_sy + static_cast<index_t>(s.x0) * x.img_sx;
        const T* SSCHSR_RESTRICT r00 = s.v00 ? img + at : x.zeros;
        const T* SSCHSR_RESTRICT r01 = s.v01 ? img + at + x.img_sx : x.zeros;
        const T* SSCHSR_RESTRICT r10 = s.v10 ? img + at + x.img_sy : x.zeros;
        const T* SSCHSR_RESTRICT r11 = s.v11 ? img + at + x.img_sy + x.img_sx : x.zeros;
        const T w00 = s.w00 * m, w01 = s.w01 * m, w10 = s.w10 * m, w11 = s.w11 * m;
        for (index_t j = 0; j < n; ++j) dst[j] = w00 * r00[j] + w01 * r01[j] + w10 * r10[j] + w11 * r11[j];
      }
      c = seg_end;
    }
  }
}

// One task: output pixels [p0, p0 + np) (np ≤ kTileP) of conv group gi of the current image.
// abuf: kTileP × chunk elements; cbuf: kTileP × Og_pad elements (both per thread).
template <typename T, typename Micro>
SSCHSR_ALWAYS_INLINE void process_tile_impl(const Ctx<T>& x, index_t gi, index_t p0, index_t np, T* abuf, T* cbuf) {
  constexpr index_t NR = kNR<T>;
  T base_y[kTileP];
  T base_x[kTileP];
  for (index_t i = 0; i < np; ++i) {
    const index_t p = p0 + i;
    const index_t oy = p / x.Wo;
    const index_t ox = p - oy * x.Wo;
    base_y[i] = static_cast<T>(oy * x.sh - x.ph);
    base_x[i] = static_cast<T>(ox * x.sw - x.pw);
  }
  const index_t rows = round_up(np, kMR);
  const index_t nblocks = x.Og_pad / NR;
  for (index_t k0 = 0; k0 < x.Kfull; k0 += x.chunk) {
    const index_t k1 = std::min(k0 + x.chunk, x.Kfull);
    const index_t kc = k1 - k0;
    gather_chunk(x, gi, p0, np, k0, k1, base_y, base_x, abuf);
    // Rows past np feed accumulators that are never stored; zero them so they stay finite.
    if (rows > np) std::memset(abuf + np * kc, 0, sizeof(T) * static_cast<std::size_t>((rows - np) * kc));
    const bool accumulate = k0 != 0;
    for (index_t nb = 0; nb < nblocks; ++nb) {
      const T* panel = x.wpack + ((gi * nblocks + nb) * x.Kfull + k0) * NR;
      for (index_t m = 0; m < rows; m += kMR)
        Micro::run(kc, abuf + m * kc, kc, panel, cbuf + m * x.Og_pad + nb * NR, x.Og_pad, accumulate);
    }
  }
  for (index_t o = 0; o < x.Og; ++o) {
    const index_t oc = gi * x.Og + o;
    const T bv = x.bias != nullptr ? x.bias[oc] : T(0);
    T* SSCHSR_RESTRICT dst = x.out + oc * x.HoWo + p0;
    const T* SSCHSR_RESTRICT src = cbuf + o;
    for (index_t i = 0; i < np; ++i) dst[i] = src[i * x.Og_pad] + bv;
  }
}

template <typename T>
using TileFn = void (*)(const Ctx<T>&, index_t, index_t, index_t, T*, T*);

template <typename T>
void process_tile_generic(const Ctx<T>& x, index_t gi, index_t p0, index_t np, T* abuf, T* cbuf) {
  process_tile_impl<T, MicroGeneric<T>>(x, gi, p0, np, abuf, cbuf);
}

#if SSCHSR_DCN_X86
template <typename T>
SSCHSR_TARGET_AVX2 void process_tile_avx2(const Ctx<T>& x, index_t gi, index_t p0, index_t np, T* abuf, T* cbuf) {
  process_tile_impl<T, MicroAvx2<T>>(x, gi, p0, np, abuf, cbuf);
}
#endif

template <typename T>
TileFn<T> select_tile_fn(bool portable_only) {
#if SSCHSR_DCN_X86
  if (!portable_only && cpu_has_avx2_fma()) return &process_tile_avx2<T>;
#endif
  (void)portable_only;
  return &process_tile_generic<T>;
}

// Weights (O, Cg, KH, KW) → [gi][nb][k = tap·Cg + c][NR], zero-padded to Og_pad output channels.
template <typename T>
void pack_weights(const T* weight, index_t groups, index_t Og, index_t Og_pad, index_t Cg, index_t K, T* wpack) {
  constexpr index_t NR = kNR<T>;
  const index_t nblocks = Og_pad / NR;
  const index_t Kfull = K * Cg;
  for (index_t gi = 0; gi < groups; ++gi)
    for (index_t nb = 0; nb < nblocks; ++nb) {
      T* panel = wpack + (gi * nblocks + nb) * Kfull * NR;
      for (index_t t = 0; t < K; ++t)
        for (index_t c = 0; c < Cg; ++c) {
          T* dst = panel + (t * Cg + c) * NR;
          for (index_t j = 0; j < NR; ++j) {
            const index_t o = nb * NR + j;
            dst[j] = o < Og ? weight[((gi * Og + o) * Cg + c) * K + t] : T(0);
          }
        }
    }
}

template <typename T>
void run_cpu(const DeformConv2dParams& p, const T* input, const T* offset, const T* mask, const T* weight,
             const T* bias, T* output) {
  if (const char* err = deform_conv2d_check(p)) throw std::invalid_argument(std::string("deform_conv2d: ") + err);
  constexpr index_t NR = kNR<T>;
  Ctx<T> x{};
  x.C = p.in_channels, x.H = p.height, x.W = p.width, x.O = p.out_channels;
  x.G = p.offset_groups, x.KH = p.kernel_h, x.KW = p.kernel_w, x.K = p.kernel_h * p.kernel_w;
  x.Cg = p.in_channels / p.groups, x.Og = p.out_channels / p.groups, x.Og_pad = round_up(x.Og, NR);
  x.cpg = p.in_channels / p.offset_groups, x.Kfull = x.K * x.Cg;
  x.Ho = p.out_h, x.Wo = p.out_w, x.HoWo = p.out_h * p.out_w;
  x.sh = p.stride_h, x.sw = p.stride_w, x.ph = p.pad_h, x.pw = p.pad_w, x.dh = p.dilation_h, x.dw = p.dilation_w;
  // Chunks end on tap boundaries when a tap's channels fit, so an offset group's sample is computed once per tap.
  x.chunk = x.Cg >= kChunkK ? kChunkK : std::max<index_t>(1, kChunkK / std::max<index_t>(x.Cg, 1)) * x.Cg;
  x.chunk = std::min(x.chunk, std::max<index_t>(x.Kfull, 1));
  x.bias = bias;
  const index_t B = p.batch;
  if (B == 0 || x.O == 0) return;
  if (x.Kfull == 0) {  // no input channels: the output is the bias
    for (index_t b = 0; b < B; ++b)
      for (index_t o = 0; o < x.O; ++o)
        std::fill_n(output + (b * x.O + o) * x.HoWo, x.HoWo, bias != nullptr ? bias[o] : T(0));
    return;
  }

  AlignedArray<T> wpack(p.groups * x.Og_pad * x.Kfull);
  pack_weights(weight, p.groups, x.Og, x.Og_pad, x.Cg, x.K, wpack.get());
  x.wpack = wpack.get();
  std::vector<T> zeros(static_cast<std::size_t>(x.cpg), T(0));
  x.zeros = zeros.data();

  const bool channels_last = p.in_stride_c == 1;
  std::unique_ptr<AlignedArray<T>> nhwc;
  if (!channels_last) nhwc = std::make_unique<AlignedArray<T>>(x.H * x.W * x.C);

#ifdef _OPENMP
  const int threads = p.num_threads > 0 ? p.num_threads : omp_get_max_threads();
#else
  const int threads = 1;
#endif
  const index_t a_elems = kTileP * x.chunk;
  const index_t c_elems = kTileP * x.Og_pad;
  AlignedArray<T> scratch(static_cast<index_t>(threads) * (a_elems + c_elems));
  const TileFn<T> tile_fn = select_tile_fn<T>(p.cpu_portable_only);
  const index_t tiles = (x.HoWo + kTileP - 1) / kTileP;
  const index_t tasks = tiles * p.groups;

#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    T* abuf = scratch.get() + static_cast<index_t>(tid) * (a_elems + c_elems);
    T* cbuf = abuf + a_elems;
    for (index_t b = 0; b < B; ++b) {
      const T* src = input + b * p.in_stride_n;
      if (!channels_last) {
        T* dst = nhwc->get();
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (index_t y = 0; y < x.H; ++y)
          for (index_t c = 0; c < x.C; ++c) {
            const T* s = src + c * p.in_stride_c + y * p.in_stride_h;
            T* d = dst + y * x.W * x.C + c;
            for (index_t xx = 0; xx < x.W; ++xx) d[xx * x.C] = s[xx * p.in_stride_w];
          }
        // (implicit barrier: the copy is complete before any task reads it)
      }
      Ctx<T> xb = x;
      if (channels_last) {
        xb.img = src, xb.img_sy = p.in_stride_h, xb.img_sx = p.in_stride_w;
      } else {
        xb.img = nhwc->get(), xb.img_sy = x.W * x.C, xb.img_sx = x.C;
      }
      xb.offset = offset + b * 2 * x.G * x.K * x.HoWo;
      xb.mask = mask != nullptr ? mask + b * x.G * x.K * x.HoWo : nullptr;
      xb.out = output + b * x.O * x.HoWo;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
      for (index_t task = 0; task < tasks; ++task) {
        const index_t gi = task / tiles;
        const index_t p0 = (task - gi * tiles) * kTileP;
        tile_fn(xb, gi, p0, std::min(kTileP, x.HoWo - p0), abuf, cbuf);
      }
      // (implicit barrier: every task of this image is done before its NHWC copy is overwritten)
    }
  }
}

}  // namespace

void modulated_deform_conv2d_cpu(const DeformConv2dParams& p, const float* input, const float* offset,
                                 const float* mask, const float* weight, const float* bias, float* output) {
  run_cpu<float>(p, input, offset, mask, weight, bias, output);
}

void modulated_deform_conv2d_cpu(const DeformConv2dParams& p, const double* input, const double* offset,
                                 const double* mask, const double* weight, const double* bias, double* output) {
  run_cpu<double>(p, input, offset, mask, weight, bias, output);
}

const char* modulated_deform_conv2d_cpu_isa() {
#if SSCHSR_DCN_X86
  if (cpu_has_avx2_fma()) return "avx2";
#endif
  return "generic";
}

}  // namespace sschsr
