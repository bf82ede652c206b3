// CPU kernels of spectral (channel) attention: one pass for the Gram matrix and squared norms, softmax, fused A·V.
//
// Pass 1 splits the pixels of every (batch, head) into fixed-size work items (so the result does not depend on the
// thread count), each accumulating q·kᵀ and Σq², Σk² over its pixels in cache-sized chunks; the partials are then
// added in item order. Normalised q and k are never formed: the softmax divides the c×c Gram entries by the norms.
// Pass 2 multiplies the c×c attention by each pixel chunk of v and writes the output directly. fp32 statistics for
// fp32/fp16/bf16 inputs, fp64 for fp64. x86-64 CPUs with AVX2+FMA get hand-blocked micro-kernels (selected at run
// time; the build itself targets baseline x86-64); other CPUs run the portable loops.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sschsr/spectral_attention.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SSCHSR_SA_X86 1
#define SSCHSR_SA_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace sschsr {
namespace spectral {
namespace {

using storage::bfloat16_t;
using storage::half_t;

constexpr index_t kSplit = 4096;    // pixels per statistics work item (fixed, so results ignore the thread count)
constexpr index_t kChunk = 1024;    // pixels per cache block inside a statistics work item
constexpr index_t kAvChunk = 256;   // pixels per A·V work item

bool use_avx2() {
#ifdef SSCHSR_SA_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// ---- portable building blocks (any S; also the fp64 path) -------------------------------------------------------

// gram[i·ldg + j] += Σ_p q_i(p) k_j(p) over L pixels for the c×c block; rows have stride ld.
template <typename S>
void gram_generic(const S* q, const S* k, index_t ld, index_t c, index_t L, S* gram, index_t ldg) {
  for (index_t i = 0; i < c; ++i) {
    const S* qi = q + i * ld;
    for (index_t j = 0; j < c; ++j) {
      const S* kj = k + j * ld;
      S s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      index_t p = 0;
      for (; p + 4 <= L; p += 4) {
        s0 += qi[p] * kj[p];
        s1 += qi[p + 1] * kj[p + 1];
        s2 += qi[p + 2] * kj[p + 2];
        s3 += qi[p + 3] * kj[p + 3];
      }
      for (; p < L; ++p) s0 += qi[p] * kj[p];
      gram[i * ldg + j] += (s0 + s1) + (s2 + s3);
    }
  }
}

template <typename S>
S sumsq_generic(const S* x, index_t L) {
  S s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  index_t p = 0;
  for (; p + 4 <= L; p += 4) {
    s0 += x[p] * x[p];
    s1 += x[p + 1] * x[p + 1];
    s2 += x[p + 2] * x[p + 2];
    s3 += x[p + 3] * x[p + 3];
  }
  for (; p < L; ++p) s0 += x[p] * x[p];
  return (s0 + s1) + (s2 + s3);
}

// out[i·ldo + p] = Σ_j a[i·c + j] v[j·ldv + p] for i < c, p < L.
template <typename S>
void av_generic(const S* a, const S* v, index_t ldv, index_t c, index_t L, S* out, index_t ldo) {
  for (index_t i = 0; i < c; ++i) {
    S* o = out + i * ldo;
    for (index_t p = 0; p < L; ++p) o[p] = 0;
    for (index_t j = 0; j < c; ++j) {
      const S aij = a[i * c + j];
      const S* vj = v + j * ldv;
      for (index_t p = 0; p < L; ++p) o[p] += aij * vj[p];
    }
  }
}

// ---- AVX2 + FMA micro-kernels (fp32) ----------------------------------------------------------------------------
#ifdef SSCHSR_SA_X86

SSCHSR_SA_AVX2 inline float hsum256(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// MR q rows × NR k rows, dot products over L pixels (vectorised along the pixels), added into gram. 3 × 4 measured
// faster here than 6 × 2 (q rows from L1, k rows from L2) and than smaller chunks with fewer horizontal sums.
template <int MR, int NR>
SSCHSR_SA_AVX2 void gram_micro(const float* q, const float* k, index_t ld, index_t L, float* gram, index_t ldg) {
  __m256 acc[MR][NR];  // 3 × 4 accumulators + 3 q vectors + 1 k vector = the 16 AVX registers
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  index_t p = 0;
  for (; p + 8 <= L; p += 8) {
    __m256 qv[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) qv[i] = _mm256_loadu_ps(q + i * ld + p);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m256 kv = _mm256_loadu_ps(k + j * ld + p);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(qv[i], kv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = hsum256(acc[i][j]);
      for (index_t t = p; t < L; ++t) s += q[i * ld + t] * k[j * ld + t];
      gram[i * ldg + j] += s;
    }
}

template <int MR>
SSCHSR_SA_AVX2 void gram_row_block(const float* q, const float* k, index_t ld, index_t c, index_t L, float* gram,
                                   index_t ldg) {
  index_t j = 0;
  for (; j + 4 <= c; j += 4) gram_micro<MR, 4>(q, k + j * ld, ld, L, gram + j, ldg);
  switch (c - j) {
    case 3: gram_micro<MR, 3>(q, k + j * ld, ld, L, gram + j, ldg); break;
    case 2: gram_micro<MR, 2>(q, k + j * ld, ld, L, gram + j, ldg); break;
    case 1: gram_micro<MR, 1>(q, k + j * ld, ld, L, gram + j, ldg); break;
    default: break;
  }
}

SSCHSR_SA_AVX2 void gram_avx2(const float* q, const float* k, index_t ld, index_t c, index_t L, float* gram,
                              index_t ldg) {
  index_t i = 0;
  for (; i + 3 <= c; i += 3) gram_row_block<3>(q + i * ld, k, ld, c, L, gram + i * ldg, ldg);
  switch (c - i) {
    case 2: gram_row_block<2>(q + i * ld, k, ld, c, L, gram + i * ldg, ldg); break;
    case 1: gram_row_block<1>(q + i * ld, k, ld, c, L, gram + i * ldg, ldg); break;
    default: break;
  }
}

SSCHSR_SA_AVX2 float sumsq_avx2(const float* x, index_t L) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  index_t p = 0;
  for (; p + 16 <= L; p += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + p), x1 = _mm256_loadu_ps(x + p + 8);
    a0 = _mm256_fmadd_ps(x0, x0, a0);
    a1 = _mm256_fmadd_ps(x1, x1, a1);
  }
  for (; p + 8 <= L; p += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + p);
    a0 = _mm256_fmadd_ps(x0, x0, a0);
  }
  float s = hsum256(_mm256_add_ps(a0, a1));
  for (; p < L; ++p) s += x[p] * x[p];
  return s;
}

// MR output rows × 16 pixels: out = A[rows, :] · v[:, 16 pixels].
template <int MR>
SSCHSR_SA_AVX2 void av_micro16(const float* a, index_t c, const float* v, index_t ldv, float* out, index_t ldo) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (index_t j = 0; j < c; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * ldv);
    const __m256 v1 = _mm256_loadu_ps(v + j * ldv + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 aij = _mm256_broadcast_ss(a + i * c + j);
      acc[i][0] = _mm256_fmadd_ps(aij, v0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(aij, v1, acc[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(out + i * ldo, acc[i][0]);
    _mm256_storeu_ps(out + i * ldo + 8, acc[i][1]);
  }
}

template <int MR>
SSCHSR_SA_AVX2 void av_micro8(const float* a, index_t c, const float* v, index_t ldv, float* out, index_t ldo) {
  __m256 acc[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (index_t j = 0; j < c; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * ldv);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + i * c + j), v0, acc[i]);
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + i * ldo, acc[i]);
}

template <int MR>
SSCHSR_SA_AVX2 void av_rows(const float* a, index_t c, const float* v, index_t ldv, index_t L, float* out,
                            index_t ldo) {
  index_t p = 0;
  for (; p + 16 <= L; p += 16) av_micro16<MR>(a, c, v + p, ldv, out + p, ldo);
  for (; p + 8 <= L; p += 8) av_micro8<MR>(a, c, v + p, ldv, out + p, ldo);
  for (; p < L; ++p)
    for (int i = 0; i < MR; ++i) {
      float s = 0;
      for (index_t j = 0; j < c; ++j) s += a[i * c + j] * v[j * ldv + p];
      out[i * ldo + p] = s;
    }
}

SSCHSR_SA_AVX2 void av_avx2(const float* a, const float* v, index_t ldv, index_t c, index_t L, float* out,
                            index_t ldo) {
  index_t i = 0;
  for (; i + 6 <= c; i += 6) av_rows<6>(a + i * c, c, v, ldv, L, out + i * ldo, ldo);
  switch (c - i) {
    case 5: av_rows<5>(a + i * c, c, v, ldv, L, out + i * ldo, ldo); break;
    case 4: av_rows<4>(a + i * c, c, v, ldv, L, out + i * ldo, ldo); break;
    case 3: av_rows<3>(a + i * c, c, v, ldv, L, out + i * ldo, ldo); break;
    case 2: av_rows<2>(a + i * c, c, v, ldv, L, out + i * ldo, ldo); break;
    case 1: av_rows<1>(a + i * c, c, v, ldv, L, out + i * ldo, ldo); break;
    default: break;
  }
}

#endif  // SSCHSR_SA_X86

// ---- dispatch over the accumulation type -------------------------------------------------------------------------

template <typename S>
void gram_block(const S* q, const S* k, index_t ld, index_t c, index_t L, S* gram) {
#ifdef SSCHSR_SA_X86
  if constexpr (std::is_same_v<S, float>) {
    if (use_avx2()) return gram_avx2(q, k, ld, c, L, gram, c);
  }
#endif
  gram_generic(q, k, ld, c, L, gram, c);
}

template <typename S>
S sumsq(const S* x, index_t L) {
#ifdef SSCHSR_SA_X86
  if constexpr (std::is_same_v<S, float>) {
    if (use_avx2()) return sumsq_avx2(x, L);
  }
#endif
  return sumsq_generic(x, L);
}

template <typename S>
void av_block(const S* a, const S* v, index_t ldv, index_t c, index_t L, S* out, index_t ldo) {
#ifdef SSCHSR_SA_X86
  if constexpr (std::is_same_v<S, float>) {
    if (use_avx2()) return av_avx2(a, v, ldv, c, L, out, ldo);
  }
#endif
  av_generic(a, v, ldv, c, L, out, ldo);
}

// Rows [0, c) × pixels [0, L) of a channel-major map (row stride ld) converted to S in a c × L buffer of row stride
// ldd. Copying even fp32 rows pays off: rows of the input are H·W elements apart, often a multiple of 4 KiB, so the
// c rows a micro-kernel reads at one pixel offset would all fall into the same L1 set; ldd is padded to avoid that.
template <typename T, typename S>
void load_rows(const T* src, index_t ld, index_t c, index_t L, S* dst, index_t ldd) {
  for (index_t i = 0; i < c; ++i) {
    const T* s = src + i * ld;
    S* d = dst + i * ldd;
    if constexpr (std::is_same_v<T, S>) {
      std::memcpy(d, s, sizeof(S) * static_cast<std::size_t>(L));
    } else {
      for (index_t p = 0; p < L; ++p) d[p] = storage::load_as<S>(s[p]);
    }
  }
}

constexpr index_t kPad = 16;  // row padding (elements) of the chunk buffers

// Statistics of every (batch, head): gram (B·heads·c·c), qsq, ksq (B·C), in S.
template <typename T, typename S>
void compute_stats(const T* q, const T* k, const AttentionShape& sh, S* gram, S* qsq, S* ksq) {
  const index_t B = sh.batch, C = sh.channels, P = sh.pixels, H = sh.heads, c = C / H;
  const index_t nsplit = std::max<index_t>(1, (P + kSplit - 1) / kSplit);
  const index_t part = c * c + 2 * c;  // one work item's partial: gram, qsq, ksq
  const index_t items = B * H * nsplit;
  std::vector<S> partial(static_cast<std::size_t>(items * part), S(0));
  const index_t ldb = kChunk + kPad;
#pragma omp parallel
  {
    std::vector<S> qbuf(static_cast<std::size_t>(c * ldb)), kbuf(static_cast<std::size_t>(c * ldb));
#pragma omp for schedule(dynamic)
    for (index_t item = 0; item < items; ++item) {
      const index_t s = item % nsplit, bh = item / nsplit;
      const index_t b = bh / H, h = bh % H;
      const index_t p0 = s * kSplit, p1 = std::min(P, p0 + kSplit);
      S* g = partial.data() + item * part;
      S* qs = g + c * c;
      S* ks = qs + c;
      const T* qh = q + (b * C + h * c) * P;
      const T* kh = k + (b * C + h * c) * P;
      for (index_t c0 = p0; c0 < p1; c0 += kChunk) {
        const index_t L = std::min(kChunk, p1 - c0);
        load_rows(qh + c0, P, c, L, qbuf.data(), ldb);
        load_rows(kh + c0, P, c, L, kbuf.data(), ldb);
        const S* qa = qbuf.data();
        const S* ka = kbuf.data();
        const index_t ld = ldb;
        for (index_t i = 0; i < c; ++i) {
          qs[i] += sumsq(qa + i * ld, L);
          ks[i] += sumsq(ka + i * ld, L);
        }
        gram_block(qa, ka, ld, c, L, g);
      }
    }
  }
  // Fixed-order reduction over the pixel splits.
#pragma omp parallel for schedule(static)
  for (index_t bh = 0; bh < B * H; ++bh) {
    const index_t b = bh / H, h = bh % H;
    S* g = gram + bh * c * c;
    S* qs = qsq + b * C + h * c;
    S* ks = ksq + b * C + h * c;
    for (index_t t = 0; t < c * c; ++t) g[t] = 0;
    for (index_t t = 0; t < c; ++t) qs[t] = ks[t] = 0;
    for (index_t s = 0; s < nsplit; ++s) {
      const S* src = partial.data() + (bh * nsplit + s) * part;
      for (index_t t = 0; t < c * c; ++t) g[t] += src[t];
      for (index_t t = 0; t < c; ++t) {
        qs[t] += src[c * c + t];
        ks[t] += src[c * c + c + t];
      }
    }
  }
}

template <typename T, typename S>
void attention(const T* q, const T* k, const T* v, const S* tau, const AttentionShape& sh, T* out) {
  const index_t B = sh.batch, C = sh.channels, P = sh.pixels, H = sh.heads, c = C / H;
  std::vector<S> gram(static_cast<std::size_t>(B * H * c * c)), qsq(static_cast<std::size_t>(B * C)),
      ksq(static_cast<std::size_t>(B * C));
  compute_stats(q, k, sh, gram.data(), qsq.data(), ksq.data());
  std::vector<S>& attn = gram;  // softmax in place, row by row
  std::vector<S> row(static_cast<std::size_t>(c));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < c; ++i) {
        S* g = attn.data() + ((b * H + h) * c + i) * c;
        attention_softmax_row(g, qsq[b * C + h * c + i], ksq.data() + b * C + h * c, tau[h], c, row.data());
        std::memcpy(g, row.data(), sizeof(S) * c);
      }
  if (P == 0) return;
  const index_t nchunk = (P + kAvChunk - 1) / kAvChunk;
  const index_t items = B * H * nchunk;
  constexpr bool direct = std::is_same_v<T, S>;  // write the output in place (no conversion buffer)
  const index_t ldb = kAvChunk + kPad;
#pragma omp parallel
  {
    std::vector<S> vbuf(static_cast<std::size_t>(c * ldb)), obuf;
    if (!direct) obuf.resize(static_cast<std::size_t>(c * ldb));
#pragma omp for schedule(dynamic, 4)
    for (index_t item = 0; item < items; ++item) {
      const index_t t = item % nchunk, bh = item / nchunk;
      const index_t b = bh / H, h = bh % H;
      const index_t p0 = t * kAvChunk, L = std::min(kAvChunk, P - p0);
      const S* a = attn.data() + bh * c * c;
      const T* vh = v + (b * C + h * c) * P + p0;
      T* oh = out + (b * C + h * c) * P + p0;
      load_rows(vh, P, c, L, vbuf.data(), ldb);
      if constexpr (direct) {
        av_block(a, vbuf.data(), ldb, c, L, oh, P);
      } else {
        av_block(a, vbuf.data(), ldb, c, L, obuf.data(), ldb);
        for (index_t i = 0; i < c; ++i)
          for (index_t p = 0; p < L; ++p) oh[i * P + p] = storage::StoreAs<T>::from(obuf[i * ldb + p]);
      }
    }
  }
}

}  // namespace

void gram_and_norms_cpu(Dtype dtype, const void* q, const void* k, const AttentionShape& shape, void* gram, void* q_sq,
                        void* k_sq) {
  switch (dtype) {
    case Dtype::f32:
      return compute_stats(static_cast<const float*>(q), static_cast<const float*>(k), shape,
                           static_cast<float*>(gram), static_cast<float*>(q_sq), static_cast<float*>(k_sq));
    case Dtype::f64:
      return compute_stats(static_cast<const double*>(q), static_cast<const double*>(k), shape,
                           static_cast<double*>(gram), static_cast<double*>(q_sq), static_cast<double*>(k_sq));
    case Dtype::f16:
      return compute_stats(static_cast<const half_t*>(q), static_cast<const half_t*>(k), shape,
                           static_cast<float*>(gram), static_cast<float*>(q_sq), static_cast<float*>(k_sq));
    case Dtype::bf16:
      return compute_stats(static_cast<const bfloat16_t*>(q), static_cast<const bfloat16_t*>(k), shape,
                           static_cast<float*>(gram), static_cast<float*>(q_sq), static_cast<float*>(k_sq));
  }
}

void spectral_attention_cpu(Dtype dtype, const void* q, const void* k, const void* v, const void* temperature,
                            const AttentionShape& shape, void* out) {
  switch (dtype) {
    case Dtype::f32:
      return attention(static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v),
                       static_cast<const float*>(temperature), shape, static_cast<float*>(out));
    case Dtype::f64:
      return attention(static_cast<const double*>(q), static_cast<const double*>(k), static_cast<const double*>(v),
                       static_cast<const double*>(temperature), shape, static_cast<double*>(out));
    case Dtype::f16:
      return attention(static_cast<const half_t*>(q), static_cast<const half_t*>(k), static_cast<const half_t*>(v),
                       static_cast<const float*>(temperature), shape, static_cast<half_t*>(out));
    case Dtype::bf16:
      return attention(static_cast<const bfloat16_t*>(q), static_cast<const bfloat16_t*>(k),
                       static_cast<const bfloat16_t*>(v), static_cast<const float*>(temperature), shape,
                       static_cast<bfloat16_t*>(out));
  }
}

}  // namespace spectral
}  // namespace sschsr
