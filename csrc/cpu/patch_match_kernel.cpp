// CPU kernel of exhaustive patch matching: streamed pixel-pair GEMMs along row diagonals with a running arg-max.
//
// score(Y, X; y, x) = Σ_{dy,dx} G_{Y+dy, y+dy}[X+dx][x+dx] · rpn(Y, X), where G_{Y', y'} = (normalised reference row Y')
// · (normalised input row y')ᵀ is a w×w block of pixel inner products (K = C) and rpn = 1 / (patch norm + 1e-5).
// All (Y, y) pairs with the same D = Y − y form a diagonal; walking a diagonal, each pixel-row pair (Y', y') is packed
// and multiplied exactly once, collapsed along its p column diagonals into H (wp × wp), and the sum of p consecutive H
// blocks is the full score block of one (Y, y) pair, which feeds a per-position running maximum. That is C·(h·w)²
// multiply-adds instead of C·p²·(positions)², and the memory is O(positions + threads · w·(C + w)): no score matrix,
// no normalised copy of the maps (rows are normalised while packed). Diagonals run in parallel (OpenMP, dynamic);
// each thread keeps its own best (value, index) per position, merged at the end with the lowest-index rule, so the
// result does not depend on the thread count or schedule.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "sschsr/patch_match.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SSCHSR_PM_X86 1
#define SSCHSR_PM_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace sschsr {
namespace patchmatch {
namespace {

using storage::bfloat16_t;
using storage::half_t;

constexpr index_t kMR = 6;   // reference pixels per micro-tile (rows of G)
constexpr index_t kNR = 16;  // input pixels per micro-tile (columns of G)
constexpr index_t kDiagGroup = 6;  // row diagonals walked together by one thread

bool use_avx2() {
#ifdef SSCHSR_PM_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

index_t round_up(index_t v, index_t m) { return (v + m - 1) / m * m; }

// Per-pixel factors of one map (C×h×w): inv[pix] = 1 / max(‖x‖, 1e-12), nsq[pix] = squared norm after normalising.
template <typename T, typename S>
void pixel_factors(const T* x, index_t C, index_t hw, S* inv, S* nsq) {
  constexpr index_t kBlock = 512;
  const index_t nblocks = (hw + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (index_t blk = 0; blk < nblocks; ++blk) {
    const index_t p0 = blk * kBlock, L = std::min(kBlock, hw - p0);
    double acc[kBlock];
    for (index_t t = 0; t < L; ++t) acc[t] = 0.0;
    for (index_t c = 0; c < C; ++c) {
      const T* row = x + c * hw + p0;
      for (index_t t = 0; t < L; ++t) {
        const double v = storage::load_as<double>(row[t]);
        acc[t] += v * v;
      }
    }
    for (index_t t = 0; t < L; ++t) {
      double r, n2;
      pixel_normalisation(acc[t], &r, &n2);
      inv[p0 + t] = static_cast<S>(r);
      nsq[p0 + t] = static_cast<S>(n2);
    }
  }
}

// Reference row operand: the normalised pixels of row `row` (x[c][row][X] · inv[X]) as dst[c·lda + X], X < w, zero
// for X in [w, lda). A plain strided copy: the micro-kernel broadcasts 6 neighbouring pixels per channel from it.
template <typename T, typename S>
void pack_rows_plain(const T* x, index_t C, index_t hw, index_t w, index_t row, const S* inv, S* dst, index_t lda) {
  const T* base = x + row * w;
  const S* r = inv + row * w;
  for (index_t c = 0; c < C; ++c) {
    const T* s = base + c * hw;
    S* d = dst + c * lda;
    for (index_t X = 0; X < w; ++X) d[X] = storage::load_as<S>(s[X]) * r[X];
    for (index_t X = w; X < lda; ++X) d[X] = S(0);
  }
}

// Input row operand: the normalised pixels of row `row` in panels of kNR pixels, dst[g][c][kNR] (zero padded), so
// the micro-kernel reads each panel contiguously.
template <typename T, typename S>
void pack_rows_panels(const T* x, index_t C, index_t hw, index_t w, index_t row, const S* inv, S* dst) {
  const index_t full = w / kNR, rest = w - full * kNR;
  const T* base = x + row * w;
  const S* r = inv + row * w;
  for (index_t c = 0; c < C; ++c) {
    const T* s = base + c * hw;
    for (index_t g = 0; g < full; ++g) {
      S* d = dst + (g * C + c) * kNR;
      const index_t x0 = g * kNR;
      for (index_t t = 0; t < kNR; ++t) d[t] = storage::load_as<S>(s[x0 + t]) * r[x0 + t];
    }
    if (rest) {
      S* d = dst + (full * C + c) * kNR;
      const index_t x0 = full * kNR;
      for (index_t t = 0; t < rest; ++t) d[t] = storage::load_as<S>(s[x0 + t]) * r[x0 + t];
      for (index_t t = rest; t < kNR; ++t) d[t] = S(0);
    }
  }
}

// G[i][j] (row stride ldg) for the reference row a (dst of pack_rows_plain) and the input panels b, K = C.
template <typename S>
void gemm_generic(const S* a, index_t lda, const S* b, index_t C, index_t ga, index_t gb, S* g, index_t ldg) {
  for (index_t jb = 0; jb < gb; ++jb)
    for (index_t ia = 0; ia < ga; ++ia) {
      const S* ap = a + ia * kMR;
      const S* bp = b + jb * C * kNR;
      S acc[kMR][kNR] = {};
      for (index_t k = 0; k < C; ++k)
        for (index_t i = 0; i < kMR; ++i) {
          const S av = ap[k * lda + i];
          for (index_t j = 0; j < kNR; ++j) acc[i][j] += av * bp[k * kNR + j];
        }
      for (index_t i = 0; i < kMR; ++i)
        for (index_t j = 0; j < kNR; ++j) g[(ia * kMR + i) * ldg + jb * kNR + j] = acc[i][j];
    }
}

// H[X][x] = Σ_dx G[X+dx][x+dx] for X, x < wp.
template <typename S>
void collapse_generic(const S* g, index_t ldg, index_t wp, index_t p, S* hblk, index_t ldh) {
  for (index_t X = 0; X < wp; ++X) {
    S* hrow = hblk + X * ldh;
    for (index_t x = 0; x < wp; ++x) hrow[x] = g[X * ldg + x];
    for (index_t dx = 1; dx < p; ++dx) {
      const S* grow = g + (X + dx) * ldg + dx;
      for (index_t x = 0; x < wp; ++x) hrow[x] += grow[x];
    }
  }
}

// For one (Y, y) block: per input column x, the best X of (Σ_t H_t[X][x]) · rpn[X] (strictly greater in increasing
// X keeps the lowest X), written to bv[x], bx[x].
template <typename S>
void scan_generic(const S* const* hs, index_t p, index_t ldh, index_t wp, const S* rpn, S* bv, std::int32_t* bx) {
  for (index_t x = 0; x < wp; ++x) {
    bv[x] = -std::numeric_limits<S>::infinity();
    bx[x] = 0;
  }
  for (index_t X = 0; X < wp; ++X) {
    const S r = rpn[X];
    for (index_t x = 0; x < wp; ++x) {
      S s = hs[0][X * ldh + x];
      for (index_t t = 1; t < p; ++t) s += hs[t][X * ldh + x];
      s *= r;
      if (s > bv[x]) {
        bv[x] = s;
        bx[x] = static_cast<std::int32_t>(X);
      }
    }
  }
}

#ifdef SSCHSR_PM_X86

// 6×16 tile of G over K = C: for every k, 6 broadcasts of the reference pixels × 2 vectors of input pixels.
SSCHSR_PM_AVX2 void micro_6x16(const float* a, index_t lda, const float* b, index_t C, float* g, index_t ldg) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (index_t k = 0; k < C; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * 16);
    const __m256 b1 = _mm256_loadu_ps(b + k * 16 + 8);
    const float* ak = a + k * lda;
    __m256 av = _mm256_broadcast_ss(ak + 0);
    c00 = _mm256_fmadd_ps(av, b0, c00);
    c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(ak + 1);
    c10 = _mm256_fmadd_ps(av, b0, c10);
    c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(ak + 2);
    c20 = _mm256_fmadd_ps(av, b0, c20);
    c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(ak + 3);
    c30 = _mm256_fmadd_ps(av, b0, c30);
    c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(ak + 4);
    c40 = _mm256_fmadd_ps(av, b0, c40);
    c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(ak + 5);
    c50 = _mm256_fmadd_ps(av, b0, c50);
    c51 = _mm256_fmadd_ps(av, b1, c51);
  }
  _mm256_storeu_ps(g + 0 * ldg, c00);
  _mm256_storeu_ps(g + 0 * ldg + 8, c01);
  _mm256_storeu_ps(g + 1 * ldg, c10);
  _mm256_storeu_ps(g + 1 * ldg + 8, c11);
  _mm256_storeu_ps(g + 2 * ldg, c20);
  _mm256_storeu_ps(g + 2 * ldg + 8, c21);
  _mm256_storeu_ps(g + 3 * ldg, c30);
  _mm256_storeu_ps(g + 3 * ldg + 8, c31);
  _mm256_storeu_ps(g + 4 * ldg, c40);
  _mm256_storeu_ps(g + 4 * ldg + 8, c41);
  _mm256_storeu_ps(g + 5 * ldg, c50);
  _mm256_storeu_ps(g + 5 * ldg + 8, c51);
}

SSCHSR_PM_AVX2 void gemm_avx2(const float* a, index_t lda, const float* b, index_t C, index_t ga, index_t gb,
                              float* g, index_t ldg) {
  // The 6 reference pixels (C strided lines) stay in L1 while the contiguous input panels stream from L2.
  for (index_t ia = 0; ia < ga; ++ia)
    for (index_t jb = 0; jb < gb; ++jb)
      micro_6x16(a + ia * kMR, lda, b + jb * C * kNR, C, g + ia * kMR * ldg + jb * kNR, ldg);
}

SSCHSR_PM_AVX2 void pack_plain_avx2(const float* x, index_t C, index_t hw, index_t w, index_t row, const float* inv,
                                    float* dst, index_t lda) {
  const float* base = x + row * w;
  const float* r = inv + row * w;
  const index_t w8 = w / 8 * 8;
  for (index_t c = 0; c < C; ++c) {
    const float* s = base + c * hw;
    float* d = dst + c * lda;
    index_t X = 0;
    for (; X < w8; X += 8) _mm256_storeu_ps(d + X, _mm256_mul_ps(_mm256_loadu_ps(s + X), _mm256_loadu_ps(r + X)));
    for (; X < w; ++X) d[X] = s[X] * r[X];
    for (; X < lda; ++X) d[X] = 0.0f;
  }
}

SSCHSR_PM_AVX2 void pack_panels_avx2(const float* x, index_t C, index_t hw, index_t w, index_t row, const float* inv,
                                     float* dst) {
  const index_t full = w / kNR, rest = w - full * kNR;
  const float* base = x + row * w;
  const float* r = inv + row * w;
  for (index_t c = 0; c < C; ++c) {
    const float* s = base + c * hw;
    for (index_t g = 0; g < full; ++g) {
      float* d = dst + (g * C + c) * kNR;
      const index_t x0 = g * kNR;
      _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_loadu_ps(s + x0), _mm256_loadu_ps(r + x0)));
      _mm256_storeu_ps(d + 8, _mm256_mul_ps(_mm256_loadu_ps(s + x0 + 8), _mm256_loadu_ps(r + x0 + 8)));
    }
    if (rest) {
      float* d = dst + (full * C + c) * kNR;
      const index_t x0 = full * kNR;
      for (index_t t = 0; t < rest; ++t) d[t] = s[x0 + t] * r[x0 + t];
      for (index_t t = rest; t < kNR; ++t) d[t] = 0.0f;
    }
  }
}

// G has at least round8(wp) + p + 8 readable, finite columns per row (zero padded), so whole vectors can be read.
SSCHSR_PM_AVX2 void collapse_avx2(const float* g, index_t ldg, index_t wp, index_t p, float* hblk, index_t ldh) {
  for (index_t X = 0; X < wp; ++X) {
    float* hrow = hblk + X * ldh;
    for (index_t x = 0; x < wp; x += 8) {
      __m256 s = _mm256_loadu_ps(g + X * ldg + x);
      for (index_t dx = 1; dx < p; ++dx) s = _mm256_add_ps(s, _mm256_loadu_ps(g + (X + dx) * ldg + x + dx));
      _mm256_storeu_ps(hrow + x, s);
    }
  }
}

// Columns are processed 32 at a time with the running best in registers; H rows have ldh ≥ round32(wp) columns.
SSCHSR_PM_AVX2 void scan_avx2(const float* const* hs, index_t p, index_t ldh, index_t wp, const float* rpn, float* bv,
                              std::int32_t* bx) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (index_t x = 0; x < wp; x += 32) {
    __m256 best[4] = {ninf, ninf, ninf, ninf};
    __m256i bidx[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                       _mm256_setzero_si256()};
    for (index_t X = 0; X < wp; ++X) {
      const __m256 r = _mm256_broadcast_ss(rpn + X);
      const __m256i xi = _mm256_set1_epi32(static_cast<int>(X));
      const index_t off = X * ldh + x;
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        __m256 s = _mm256_loadu_ps(hs[0] + off + 8 * u);
        for (index_t t = 1; t < p; ++t) s = _mm256_add_ps(s, _mm256_loadu_ps(hs[t] + off + 8 * u));
        s = _mm256_mul_ps(s, r);
        const __m256 gt = _mm256_cmp_ps(s, best[u], _CMP_GT_OQ);
        best[u] = _mm256_blendv_ps(best[u], s, gt);
        bidx[u] = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(bidx[u]), _mm256_castsi256_ps(xi), gt));
      }
    }
    alignas(32) float vb[32];
    alignas(32) std::int32_t vi[32];
    for (int u = 0; u < 4; ++u) {
      _mm256_store_ps(vb + 8 * u, best[u]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(vi + 8 * u), bidx[u]);
    }
    const index_t n = std::min<index_t>(32, wp - x);
    for (index_t t = 0; t < n; ++t) {
      bv[x + t] = vb[t];
      bx[x + t] = vi[t];
    }
  }
}

#endif  // SSCHSR_PM_X86

template <typename S>
struct ThreadState {
  std::vector<S> bpack, g, h;        // input row panels, G block, H blocks (p per diagonal of the group)
  std::vector<S> apack;              // ring of packed reference rows (one per diagonal of the group)
  std::vector<index_t> apack_row;    // which reference row each ring slot holds (−1: none)
  std::vector<S> bv;
  std::vector<std::int32_t> bx;
  std::vector<S> best_v;             // per position
  std::vector<std::int32_t> best_n;  // per position
};

template <typename T, typename S>
void match_one(const T* feat, const T* ref, const MatchShape& sh, std::int64_t* index, T* similarity) {
  const index_t C = sh.channels, h = sh.height, w = sh.width, p = sh.patch;
  const index_t hw = h * w, hp = sh.out_h(), wp = sh.out_w(), P = sh.positions();
  const bool avx2 = std::is_same_v<S, float> && use_avx2();

  std::vector<S> inv_i(hw), nsq_i(hw), inv_r(hw), nsq_r(hw), wn(P), rpn(P);
  pixel_factors(feat, C, hw, inv_i.data(), nsq_i.data());
  pixel_factors(ref, C, hw, inv_r.data(), nsq_r.data());
#pragma omp parallel for schedule(static)
  for (index_t y = 0; y < hp; ++y)
    for (index_t x = 0; x < wp; ++x) {
      wn[y * wp + x] = patch_norm(nsq_i.data(), w, p, y, x);
      rpn[y * wp + x] = S(1) / patch_norm(nsq_r.data(), w, p, y, x);
    }

  const index_t ga = (w + kMR - 1) / kMR, gb = (w + kNR - 1) / kNR;
  const index_t lda = round_up(ga * kMR, 16) + 8;  // padded so channel rows do not share L1 sets
  const index_t ldg = round_up(std::max(gb * kNR, round_up(wp, 8) + p + 8), 8);
  const index_t grow = std::max(ga * kMR, wp + p);
  const index_t ldh = round_up(wp, 32);
  const index_t hblock = wp * ldh;
  const index_t ndiag = 2 * hp - 1;

  int nthreads = 1;
#ifdef _OPENMP
  nthreads = omp_get_max_threads();
#endif
  // Diagonals D = Y − y are walked kd at a time: one packed input row then serves kd GEMMs, and each packed reference
  // row serves kd consecutive steps, which divides the (memory-bound) packing cost by kd. kd shrinks when there are
  // too few diagonals to keep every thread busy.
  const index_t kd = std::max<index_t>(1, std::min<index_t>(kDiagGroup, ndiag / (4 * static_cast<index_t>(nthreads))));
  const index_t ngroups = (ndiag + kd - 1) / kd;
  std::vector<index_t> order(static_cast<std::size_t>(ngroups));  // groups nearest the main diagonal (longest) first
  for (index_t g = 0; g < ngroups; ++g) order[static_cast<std::size_t>(g)] = g;
  auto centre_dist = [&](index_t g) {
    const index_t d0 = -(hp - 1) + g * kd, d1 = std::min(hp - 1, d0 + kd - 1);
    return std::abs(d0 + d1);
  };
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return centre_dist(a) < centre_dist(b); });

  std::vector<ThreadState<S>> states(static_cast<std::size_t>(nthreads));
  for (ThreadState<S>& st : states) {  // also valid for threads the runtime might not start
    st.best_v.assign(static_cast<std::size_t>(P), -std::numeric_limits<S>::infinity());
    st.best_n.assign(static_cast<std::size_t>(P), 0);
  }

#pragma omp parallel num_threads(nthreads)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    ThreadState<S>& st = states[static_cast<std::size_t>(tid)];
    st.apack.assign(static_cast<std::size_t>(kd * C * lda), S(0));
    st.apack_row.assign(static_cast<std::size_t>(kd), -1);
    st.bpack.assign(static_cast<std::size_t>(gb * C * kNR), S(0));
    st.g.assign(static_cast<std::size_t>(grow * ldg), S(0));
    st.h.assign(static_cast<std::size_t>(kd * p * hblock), S(0));
    st.bv.assign(static_cast<std::size_t>(ldh), S(0));
    st.bx.assign(static_cast<std::size_t>(ldh), 0);
    std::vector<const S*> hs(static_cast<std::size_t>(p));

    auto pack_input = [&](index_t row) {
#ifdef SSCHSR_PM_X86
      if constexpr (std::is_same_v<T, float>) {
        if (avx2) return pack_panels_avx2(feat, C, hw, w, row, inv_i.data(), st.bpack.data());
      }
#endif
      pack_rows_panels(feat, C, hw, w, row, inv_i.data(), st.bpack.data());
    };
    auto reference_row = [&](index_t row) -> const S* {
      const index_t slot = row % kd;
      S* dst = st.apack.data() + slot * C * lda;
      if (st.apack_row[static_cast<std::size_t>(slot)] != row) {
        st.apack_row[static_cast<std::size_t>(slot)] = row;
#ifdef SSCHSR_PM_X86
        if constexpr (std::is_same_v<T, float>) {
          if (avx2) {
            pack_plain_avx2(ref, C, hw, w, row, inv_r.data(), dst, lda);
            return dst;
          }
        }
#endif
        pack_rows_plain(ref, C, hw, w, row, inv_r.data(), dst, lda);
      }
      return dst;
    };
    auto gemm_collapse = [&](const S* a, S* hblk) {
#ifdef SSCHSR_PM_X86
      if constexpr (std::is_same_v<S, float>) {
        if (avx2) {
          gemm_avx2(a, lda, st.bpack.data(), C, ga, gb, st.g.data(), ldg);
          collapse_avx2(st.g.data(), ldg, wp, p, hblk, ldh);
          return;
        }
      }
#endif
      gemm_generic(a, lda, st.bpack.data(), C, ga, gb, st.g.data(), ldg);
      collapse_generic(st.g.data(), ldg, wp, p, hblk, ldh);
    };
    // Scores of reference row Y against input row y (H blocks of the p pixel-row pairs in hs) → running maximum.
    auto scan_merge = [&](index_t Y, index_t y) {
#ifdef SSCHSR_PM_X86
      if constexpr (std::is_same_v<S, float>) {
        if (avx2) scan_avx2(hs.data(), p, ldh, wp, rpn.data() + Y * wp, st.bv.data(), st.bx.data());
      }
#endif
      if (!avx2) scan_generic(hs.data(), p, ldh, wp, rpn.data() + Y * wp, st.bv.data(), st.bx.data());
      S* bvs = st.best_v.data() + y * wp;
      std::int32_t* bns = st.best_n.data() + y * wp;
      for (index_t x = 0; x < wp; ++x) {
        const std::int32_t n = static_cast<std::int32_t>(Y * wp) + st.bx[x];
        if (better_match<S>(st.bv[x], n, bvs[x], bns[x])) {
          bvs[x] = st.bv[x];
          bns[x] = n;
        }
      }
    };

#pragma omp for schedule(dynamic, 1)
    for (index_t gi = 0; gi < ngroups; ++gi) {
      const index_t g = order[static_cast<std::size_t>(gi)];
      const index_t d0 = -(hp - 1) + g * kd, d1 = std::min(hp - 1, d0 + kd - 1);  // diagonals [d0, d1]
      // Pixel rows y' of diagonal D: [max(0, −D), min(hp, hp − D) + p − 1). Union over the group:
      const index_t r0 = std::max<index_t>(0, -d1), r1 = std::min(hp, hp - d0) + p - 1;
      for (index_t yp = r0; yp < r1; ++yp) {
        pack_input(yp);
        for (index_t D = d0; D <= d1; ++D) {
          const index_t y_lo = std::max<index_t>(0, -D), y_hi = std::min(hp, hp - D);
          if (yp < y_lo || yp >= y_hi + p - 1) continue;
          S* hbase = st.h.data() + (D - d0) * p * hblock;
          gemm_collapse(reference_row(yp + D), hbase + (yp % p) * hblock);
          const index_t y = yp - (p - 1);
          if (y < y_lo) continue;
          for (index_t u = 0; u < p; ++u) hs[u] = hbase + ((y + u) % p) * hblock;  // H_y, …, H_{y+p−1}
          scan_merge(y + D, y);
        }
      }
    }
  }

  // Merge the per-thread maxima (lowest index among equal values) and write the outputs.
#pragma omp parallel for schedule(static)
  for (index_t q = 0; q < P; ++q) {
    S v = states[0].best_v[q];
    std::int32_t n = states[0].best_n[q];
    for (int t = 1; t < nthreads; ++t)
      if (better_match<S>(states[t].best_v[q], states[t].best_n[q], v, n)) {
        v = states[t].best_v[q];
        n = states[t].best_n[q];
      }
    index[q] = n;
    similarity[q] = storage::StoreAs<T>::from(v / wn[q]);
  }
}

template <typename T, typename S>
void match(const T* feat, const T* ref, const MatchShape& sh, std::int64_t* index, T* similarity) {
  const index_t per_map = sh.channels * sh.height * sh.width, P = sh.positions();
  for (index_t b = 0; b < sh.batch; ++b)
    match_one<T, S>(feat + b * per_map, ref + b * per_map, sh, index + b * P, similarity + b * P);
}

}  // namespace

void patch_match_cpu(Dtype dtype, const void* feat, const void* ref, const MatchShape& shape, std::int64_t* index,
                     void* similarity) {
  switch (dtype) {
    case Dtype::f32:
      return match<float, float>(static_cast<const float*>(feat), static_cast<const float*>(ref), shape, index,
                                 static_cast<float*>(similarity));
    case Dtype::f64:
      return match<double, double>(static_cast<const double*>(feat), static_cast<const double*>(ref), shape, index,
                                   static_cast<double*>(similarity));
    case Dtype::f16:
      return match<half_t, float>(static_cast<const half_t*>(feat), static_cast<const half_t*>(ref), shape, index,
                                  static_cast<half_t*>(similarity));
    case Dtype::bf16:
      return match<bfloat16_t, float>(static_cast<const bfloat16_t*>(feat), static_cast<const bfloat16_t*>(ref), shape,
                                      index, static_cast<bfloat16_t*>(similarity));
  }
}

}  // namespace patchmatch
}  // namespace sschsr
