// CUDA kernels of exhaustive patch matching — unverified on hardware (compiled for sm_80/sm_90, never run here).
//
// 1. pixel_inv_kernel: 1 / max(‖pixel‖, 1e-12) per pixel of both maps (coalesced over pixels).
// 2. normalise_kernel: normalised maps transposed to pixel-major [B][h·w][Cp] (Cp = C rounded up to the K step,
//    zero padded) through 32×32 shared-memory tiles, stored in the compute type U: the input's dtype for fp16/bf16
//    (tensor-core operands), float/double otherwise.
// 3. pixel_nsq_kernel: squared norm of every stored (rounded) normalised pixel, one warp per pixel.
// 4. norms_kernel: window norm + 1e-5 and 1 / (patch norm + 1e-5) per position.
// 5. match kernels: block = 64 windows × a range of reference patches walked in tiles of 64 (increasing index);
//    scores = Σ over the p² taps and the channels of window·patch products, either with CUDA-core FMAs
//    (match_simt_kernel, fp32/fp64: 4×4 per thread) or WMMA tensor cores (match_wmma_kernel, fp16/bf16 operands,
//    fp32 accumulation; 4 warps × 32×32). Each tile feeds a per-window running maximum (strictly greater over
//    increasing patch index, lowest index on ties); each block writes one (value, index) per window and split.
// 6. finalize_kernel: merges the splits in order with the same rule, divides by the window norm, writes int64 index
//    and the similarity in the input dtype.
// Memory: two pixel-major copies of the maps + O(splits · positions); the score matrix is never stored.
// fp16/bf16: the normalised features are rounded to 16 bits before the products, so near-tied patches (score gap
// below ~1e-3) can swap relative to an fp32 computation; fp32/fp64 inputs keep full precision (no TF32).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "sschsr/cuda_io.cuh"
#include "sschsr/patch_match.h"

namespace sschsr {
namespace patchmatch {
namespace {

constexpr int kBM = 64;           // windows per block
constexpr int kBN = 64;           // reference patches per tile
constexpr int kWantBlocks = 1056;  // ≈ 8 blocks per SM on a 132-SM H100

__host__ __device__ inline index_t div_up(index_t a, index_t b) { return (a + b - 1) / b; }
std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

template <typename U>
constexpr index_t k_step() {
  return sizeof(U) == 2 ? 32 : 16;  // channels per K stage (WMMA: two 16-deep fragments)
}

struct Plan {
  index_t hw, P, Cp, pos_tiles, n_tiles, splits, tiles_per_split;
};

template <typename U>
Plan make_plan(const MatchShape& s) {
  Plan p{};
  p.hw = s.height * s.width;
  p.P = s.positions();
  p.Cp = div_up(s.channels, k_step<U>()) * k_step<U>();
  p.pos_tiles = div_up(p.P, kBM);
  p.n_tiles = div_up(p.P, kBN);
  const index_t want = std::max<index_t>(1, div_up(kWantBlocks, p.pos_tiles * std::max<index_t>(1, s.batch)));
  p.splits = std::min(std::min(p.n_tiles, want), index_t{65535});
  p.tiles_per_split = div_up(p.n_tiles, p.splits);
  p.splits = div_up(p.n_tiles, p.tiles_per_split);
  return p;
}

// Workspace: fin, fref [B][hw][Cp] U | inv_i, inv_r, nsq_i, nsq_r [B][hw] S | wn, rpn [B][P] S |
//            part_v [splits][B][P] S | part_n [splits][B][P] int32
struct Layout {
  std::size_t fin, fref, inv_i, inv_r, nsq_i, nsq_r, wn, rpn, part_v, part_n, total;
};

template <typename U, typename S>
Layout make_layout(const MatchShape& s, const Plan& p) {
  Layout l{};
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t at = off;
    off += align256(bytes);
    return at;
  };
  const std::size_t B = static_cast<std::size_t>(s.batch);
  l.fin = take(B * p.hw * p.Cp * sizeof(U));
  l.fref = take(B * p.hw * p.Cp * sizeof(U));
  l.inv_i = take(B * p.hw * sizeof(S));
  l.inv_r = take(B * p.hw * sizeof(S));
  l.nsq_i = take(B * p.hw * sizeof(S));
  l.nsq_r = take(B * p.hw * sizeof(S));
  l.wn = take(B * p.P * sizeof(S));
  l.rpn = take(B * p.P * sizeof(S));
  l.part_v = take(static_cast<std::size_t>(p.splits) * B * p.P * sizeof(S));
  l.part_n = take(static_cast<std::size_t>(p.splits) * B * p.P * sizeof(std::int32_t));
  l.total = off;
  return l;
}

// grid (ceil(hw / 256), B): one thread per pixel, reading channel planes (coalesced over pixels).
template <typename T, typename S>
__global__ void pixel_inv_kernel(const T* __restrict__ x, index_t C, index_t hw, S* __restrict__ inv) {
  const index_t pix = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t b = blockIdx.y;
  if (pix >= hw) return;
  const T* xb = x + b * C * hw + pix;
  S acc = 0;
  for (index_t c = 0; c < C; ++c) {
    const S v = static_cast<S>(DevIO<T>::load(xb[c * hw]));
    acc += v * v;
  }
  S r, unused;
  pixel_normalisation(acc, &r, &unused);
  inv[b * hw + pix] = r;
}

// grid (ceil(hw / 32), ceil(Cp / 32), B), block 32×8: out[b][pix][c] = x[b][c][pix] · inv[pix] as U, 0 for c ≥ C.
template <typename T, typename U, typename S>
__global__ void normalise_kernel(const T* __restrict__ x, const S* __restrict__ inv, index_t C, index_t Cp, index_t hw,
                                 U* __restrict__ out) {
  __shared__ S tile[32][33];
  const index_t p0 = static_cast<index_t>(blockIdx.x) * 32, c0 = static_cast<index_t>(blockIdx.y) * 32;
  const index_t b = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int r = ty; r < 32; r += 8) {  // r: channel offset, tx: pixel offset
    const index_t c = c0 + r, pix = p0 + tx;
    S v = 0;
    if (c < C && pix < hw) v = static_cast<S>(DevIO<T>::load(x[(b * C + c) * hw + pix])) * inv[b * hw + pix];
    tile[r][tx] = v;
  }
  __syncthreads();
  for (int r = ty; r < 32; r += 8) {  // r: pixel offset, tx: channel offset
    const index_t pix = p0 + r, c = c0 + tx;
    if (pix < hw && c < Cp) out[(b * hw + pix) * Cp + c] = DevIO<U>::store(tile[tx][r]);
  }
}

// One warp per pixel: Σ_c (stored normalised value)², so the patch norms match the operands actually multiplied.
template <typename U, typename S>
__global__ void pixel_nsq_kernel(const U* __restrict__ f, index_t Cp, index_t total_pixels, S* __restrict__ nsq) {
  const index_t warp = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= total_pixels) return;
  const U* row = f + warp * Cp;
  S acc = 0;
  for (index_t c = lane; c < Cp; c += 32) {
    const S v = static_cast<S>(DevIO<U>::load(row[c]));
    acc += v * v;
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) nsq[warp] = acc;
}

template <typename S>
__global__ void norms_kernel(const S* __restrict__ nsq_i, const S* __restrict__ nsq_r, index_t h, index_t w,
                             index_t p, index_t batch, S* __restrict__ wn, S* __restrict__ rpn) {
  const index_t hp = h - p + 1, wp = w - p + 1, P = hp * wp;
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * P) return;
  const index_t b = t / P, q = t % P, y = q / wp, x = q % wp;
  wn[t] = patch_norm(nsq_i + b * h * w, w, p, y, x);
  rpn[t] = S(1) / patch_norm(nsq_r + b * h * w, w, p, y, x);
}

// Top-left pixel of position (or patch) q, as an offset into a pixel-major map.
__device__ inline index_t pixel_of(index_t q, index_t wp, index_t w) { return (q / wp) * w + q % wp; }

// Merge (v, n) candidates across the lanes of a group of `width` consecutive lanes (lowest index among equal values).
template <typename S>
__device__ inline void group_best(S& v, std::int32_t& n, int width) {
  for (int off = width / 2; off > 0; off /= 2) {
    const S ov = __shfl_xor_sync(0xffffffffu, v, off);
    const std::int32_t on = __shfl_xor_sync(0xffffffffu, n, off);
    if (better_match<S>(ov, on, v, n)) {
      v = ov;
      n = on;
    }
  }
}

// CUDA-core path (fp32 / fp64). grid (pos_tiles, splits, B), 256 threads = 16×16, 4×4 scores per thread.
template <typename U>
__global__ void __launch_bounds__(256)
    match_simt_kernel(const U* __restrict__ fin, const U* __restrict__ fref, const U* __restrict__ rpn, index_t h,
                      index_t w, index_t p, index_t Cp, index_t tiles_per_split, index_t splits,
                      U* __restrict__ part_v, std::int32_t* __restrict__ part_n) {
  constexpr int BK = 16;
  __shared__ U as[BK][kBM + 4];
  __shared__ U bs[BK][kBN + 4];
  const index_t hw = h * w, wp = w - p + 1, P = (h - p + 1) * wp;
  const index_t b = blockIdx.z, split = blockIdx.y;
  const index_t q0 = static_cast<index_t>(blockIdx.x) * kBM;
  const U* fi = fin + b * hw * Cp;
  const U* fr = fref + b * hw * Cp;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;

  // Loader mapping: 1024 elements per operand tile, 4 per thread; 16 consecutive threads read 16 channels of a pixel.
  index_t a_base[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int m = (tid + e * 256) / BK;
    const index_t q = min(q0 + m, P - 1);  // clamped rows are never written out
    a_base[e] = pixel_of(q, wp, w) * Cp;
  }

  U run_v[4];
  std::int32_t run_n[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    run_v[i] = -static_cast<U>(INFINITY);
    run_n[i] = 0;
  }
  const index_t t_begin = split * tiles_per_split;
  const index_t t_end = min(t_begin + tiles_per_split, div_up(P, kBN));
  for (index_t tile = t_begin; tile < t_end; ++tile) {
    const index_t n0 = tile * kBN;
    index_t b_base[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int nn = (tid + e * 256) / BK;
      b_base[e] = pixel_of(min(n0 + nn, P - 1), wp, w) * Cp;
    }
    U acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    for (index_t tap = 0; tap < p * p; ++tap) {
      const index_t toff = ((tap / p) * w + tap % p) * Cp;
      for (index_t c0 = 0; c0 < Cp; c0 += BK) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int idx = tid + e * 256, row = idx / BK, kk = idx % BK;
          as[kk][row] = fi[a_base[e] + toff + c0 + kk];
          bs[kk][row] = fr[b_base[e] + toff + c0 + kk];
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          U a[4], bv[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = as[kk][ty * 4 + i];
#pragma unroll
          for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx * 4 + j];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * bv[j];
        }
        __syncthreads();
      }
    }
    // Epilogue: scale by 1/(patch norm + eps), best of this thread's 4 patches per row, then across the 16 threads
    // sharing the rows (lanes 0–15 or 16–31 of a warp).
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      U v = -static_cast<U>(INFINITY);
      std::int32_t n = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const index_t nj = n0 + tx * 4 + j;
        if (nj < P) {
          const U s = acc[i][j] * rpn[b * P + nj];
          if (s > v) {
            v = s;
            n = static_cast<std::int32_t>(nj);
          }
        }
      }
      group_best(v, n, 16);
      if (better_match<U>(v, n, run_v[i], run_n[i])) {
        run_v[i] = v;
        run_n[i] = n;
      }
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const index_t q = q0 + ty * 4 + i;
      if (q < P) {
        part_v[(split * gridDim.z + b) * P + q] = run_v[i];
        part_n[(split * gridDim.z + b) * P + q] = run_n[i];
      }
    }
  }
}

// Tensor-core path (fp16 / bf16 operands, fp32 accumulation). grid (pos_tiles, splits, B), 128 threads = 4 warps in
// a 2×2 arrangement of 32×32 sub-tiles (2×2 WMMA 16×16×16 fragments each).
template <typename U>
__global__ void __launch_bounds__(128)
    match_wmma_kernel(const U* __restrict__ fin, const U* __restrict__ fref, const float* __restrict__ rpn, index_t h,
                      index_t w, index_t p, index_t Cp, index_t tiles_per_split, index_t splits,
                      float* __restrict__ part_v, std::int32_t* __restrict__ part_n) {
  using namespace nvcuda;
  constexpr int BK = 32, LDS = BK + 8, LDC = kBN + 4;  // LDS: 80-byte rows (16-byte multiple), LDC: 272 bytes
  __shared__ __align__(32) U as[kBM][LDS];
  __shared__ __align__(32) U bs[kBN][LDS];
  __shared__ __align__(32) float cs[kBM][LDC];
  const index_t hw = h * w, wp = w - p + 1, P = (h - p + 1) * wp;
  const index_t b = blockIdx.z, split = blockIdx.y;
  const index_t q0 = static_cast<index_t>(blockIdx.x) * kBM;
  const U* fi = fin + b * hw * Cp;
  const U* fr = fref + b * hw * Cp;
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;

  // Loader mapping: a 64×32 tile of 16-bit values = 256 chunks of 8 values (16 bytes); 2 chunks per thread.
  index_t a_base[2];
  int ld_row[2], ld_part[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int idx = tid + e * 128;
    ld_row[e] = idx / 4;
    ld_part[e] = (idx % 4) * 8;
    a_base[e] = pixel_of(min(q0 + ld_row[e], P - 1), wp, w) * Cp;
  }
  // Epilogue mapping: 2 threads per window row, 32 patches each.
  const int erow = tid / 2, ehalf = tid % 2;
  float run_v = -INFINITY;
  std::int32_t run_n = 0;

  const index_t t_begin = split * tiles_per_split;
  const index_t t_end = min(t_begin + tiles_per_split, div_up(P, kBN));
  for (index_t tile = t_begin; tile < t_end; ++tile) {
    const index_t n0 = tile * kBN;
    index_t b_base[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) b_base[e] = pixel_of(min(n0 + ld_row[e], P - 1), wp, w) * Cp;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    for (index_t tap = 0; tap < p * p; ++tap) {
      const index_t toff = ((tap / p) * w + tap % p) * Cp;
      for (index_t c0 = 0; c0 < Cp; c0 += BK) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          *reinterpret_cast<uint4*>(&as[ld_row[e]][ld_part[e]]) =
              *reinterpret_cast<const uint4*>(fi + a_base[e] + toff + c0 + ld_part[e]);
          *reinterpret_cast<uint4*>(&bs[ld_row[e]][ld_part[e]]) =
              *reinterpret_cast<const uint4*>(fr + b_base[e] + toff + c0 + ld_part[e]);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, U, wmma::row_major> fa[2];
          wmma::fragment<wmma::matrix_b, 16, 16, 16, U, wmma::col_major> fb[2];
#pragma unroll
          for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &as[wm * 32 + i * 16][kk], LDS);
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &bs[wn * 32 + j * 16][kk], LDS);
#pragma unroll
          for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();
    float v = -INFINITY;
    std::int32_t n = 0;
    for (int jj = 0; jj < 32; ++jj) {
      const index_t nj = n0 + ehalf * 32 + jj;
      if (nj >= P) break;
      const float s = cs[erow][ehalf * 32 + jj] * rpn[b * P + nj];
      if (s > v) {
        v = s;
        n = static_cast<std::int32_t>(nj);
      }
    }
    group_best(v, n, 2);
    if (better_match<float>(v, n, run_v, run_n)) {
      run_v = v;
      run_n = n;
    }
    __syncthreads();  // cs is rewritten by the next tile
  }
  const index_t q = q0 + erow;
  if (ehalf == 0 && q < P) {
    part_v[(split * gridDim.z + b) * P + q] = run_v;
    part_n[(split * gridDim.z + b) * P + q] = run_n;
  }
}

template <typename T, typename S>
__global__ void finalize_kernel(const S* __restrict__ part_v, const std::int32_t* __restrict__ part_n,
                                const S* __restrict__ wn, index_t total, index_t splits, std::int64_t* __restrict__ index,
                                T* __restrict__ similarity) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  S v = -static_cast<S>(INFINITY);
  std::int32_t n = 0;
  for (index_t s = 0; s < splits; ++s) {
    const S sv = part_v[s * total + t];
    const std::int32_t sn = part_n[s * total + t];
    if (better_match<S>(sv, sn, v, n)) {
      v = sv;
      n = sn;
    }
  }
  index[t] = n;
  similarity[t] = DevIO<T>::store(v / wn[t]);
}

// T: input dtype; U: stored normalised feature type (operands); S: accumulation / statistics type.
template <typename T, typename U, typename S>
cudaError_t run(const void* feat, const void* ref, const MatchShape& s, std::int64_t* index, void* similarity,
                void* workspace, cudaStream_t stream) {
  if (s.batch == 0) return cudaSuccess;
  if (s.batch > 65535) return cudaErrorInvalidConfiguration;
  const Plan p = make_plan<U>(s);
  const Layout l = make_layout<U, S>(s, p);
  char* ws = static_cast<char*>(workspace);
  U* fin = reinterpret_cast<U*>(ws + l.fin);
  U* fref = reinterpret_cast<U*>(ws + l.fref);
  S* inv_i = reinterpret_cast<S*>(ws + l.inv_i);
  S* inv_r = reinterpret_cast<S*>(ws + l.inv_r);
  S* nsq_i = reinterpret_cast<S*>(ws + l.nsq_i);
  S* nsq_r = reinterpret_cast<S*>(ws + l.nsq_r);
  S* wn = reinterpret_cast<S*>(ws + l.wn);
  S* rpn = reinterpret_cast<S*>(ws + l.rpn);
  S* part_v = reinterpret_cast<S*>(ws + l.part_v);
  std::int32_t* part_n = reinterpret_cast<std::int32_t*>(ws + l.part_n);
  const T* f = static_cast<const T*>(feat);
  const T* r = static_cast<const T*>(ref);
  const unsigned B = static_cast<unsigned>(s.batch);

  const dim3 g1(static_cast<unsigned>(div_up(p.hw, 256)), B);
  pixel_inv_kernel<T, S><<<g1, 256, 0, stream>>>(f, s.channels, p.hw, inv_i);
  pixel_inv_kernel<T, S><<<g1, 256, 0, stream>>>(r, s.channels, p.hw, inv_r);
  const dim3 g2(static_cast<unsigned>(div_up(p.hw, 32)), static_cast<unsigned>(div_up(p.Cp, 32)), B);
  normalise_kernel<T, U, S><<<g2, dim3(32, 8), 0, stream>>>(f, inv_i, s.channels, p.Cp, p.hw, fin);
  normalise_kernel<T, U, S><<<g2, dim3(32, 8), 0, stream>>>(r, inv_r, s.channels, p.Cp, p.hw, fref);
  const index_t pixels = s.batch * p.hw;
  pixel_nsq_kernel<U, S><<<static_cast<unsigned>(div_up(pixels * 32, 256)), 256, 0, stream>>>(fin, p.Cp, pixels,
                                                                                               nsq_i);
  pixel_nsq_kernel<U, S><<<static_cast<unsigned>(div_up(pixels * 32, 256)), 256, 0, stream>>>(fref, p.Cp, pixels,
                                                                                               nsq_r);
  norms_kernel<S><<<static_cast<unsigned>(div_up(s.batch * p.P, 256)), 256, 0, stream>>>(
      nsq_i, nsq_r, s.height, s.width, s.patch, s.batch, wn, rpn);
  const dim3 g3(static_cast<unsigned>(p.pos_tiles), static_cast<unsigned>(p.splits), B);
  if constexpr (sizeof(U) == 2) {
    match_wmma_kernel<U><<<g3, 128, 0, stream>>>(fin, fref, rpn, s.height, s.width, s.patch, p.Cp,
                                                 p.tiles_per_split, p.splits, part_v, part_n);
  } else {
    match_simt_kernel<U><<<g3, 256, 0, stream>>>(fin, fref, rpn, s.height, s.width, s.patch, p.Cp, p.tiles_per_split,
                                                 p.splits, part_v, part_n);
  }
  finalize_kernel<T, S><<<static_cast<unsigned>(div_up(s.batch * p.P, 256)), 256, 0, stream>>>(
      part_v, part_n, wn, s.batch * p.P, p.splits, index, static_cast<T*>(similarity));
  return cudaGetLastError();
}

}  // namespace

std::size_t patch_match_cuda_workspace_bytes(Dtype dtype, const MatchShape& shape) {
  switch (dtype) {
    case Dtype::f32: return make_layout<float, float>(shape, make_plan<float>(shape)).total;
    case Dtype::f64: return make_layout<double, double>(shape, make_plan<double>(shape)).total;
    case Dtype::f16: return make_layout<__half, float>(shape, make_plan<__half>(shape)).total;
    case Dtype::bf16: return make_layout<__nv_bfloat16, float>(shape, make_plan<__nv_bfloat16>(shape)).total;
  }
  return 0;
}

cudaError_t patch_match_cuda(Dtype dtype, const void* feat, const void* ref, const MatchShape& shape,
                             std::int64_t* index, void* similarity, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::f32: return run<float, float, float>(feat, ref, shape, index, similarity, workspace, stream);
    case Dtype::f64: return run<double, double, double>(feat, ref, shape, index, similarity, workspace, stream);
    case Dtype::f16: return run<__half, __half, float>(feat, ref, shape, index, similarity, workspace, stream);
    case Dtype::bf16:
      return run<__nv_bfloat16, __nv_bfloat16, float>(feat, ref, shape, index, similarity, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace patchmatch
}  // namespace sschsr
