// CUDA kernels of spectral (channel) attention — unverified on hardware (compiled for sm_80/sm_90, never run here).
//
// 1. gram_partial_kernel: split-K over the pixels. Block (split, 32×32 tile of the c×c Gram, batch·head) stages
//    32 q rows and 32 k rows × 64 pixels in shared memory and accumulates q·kᵀ (2×2 outputs per thread) plus the
//    squared row norms (blocks on the tile diagonal edges), in fp32 (fp64 for fp64 inputs).
// 2. reduce_stats_kernel: adds the per-split partials in split order (deterministic, no atomics).
// 3. softmax_kernel: one thread per attention row, attention_softmax_row() from the shared header.
// 4. av_kernel: out tile (32 rows × 64 pixels) = A[rows, :] · v[:, pixels], A and v staged in shared memory; the
//    output is written straight from registers in the input dtype.
// Bandwidth floor: q and k are read once (pass 1), v read and out written once (pass 4): 4·B·C·H·W elements.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "sschsr/cuda_io.cuh"
#include "sschsr/spectral_attention.h"

namespace sschsr {
namespace spectral {
namespace {

constexpr int kTile = 32;      // Gram tile edge and A·V row tile
constexpr int kPix = 64;       // pixels per shared-memory stage
constexpr int kThreads = 256;  // threads per block (all kernels)
constexpr int kWantBlocks = 1024;

struct Plan {
  index_t c, bh, tiles, splits, pixels_per_split, part;  // part: elements of one partial (c² + 2c)
};

index_t div_up(index_t a, index_t b) { return (a + b - 1) / b; }

Plan make_plan(const AttentionShape& s) {
  Plan p{};
  p.c = s.channels / s.heads;
  p.bh = s.batch * s.heads;
  p.tiles = div_up(p.c, kTile);
  const index_t stages = std::max<index_t>(1, div_up(s.pixels, kPix));
  const index_t want = std::max<index_t>(1, div_up(kWantBlocks, std::max<index_t>(1, p.tiles * p.tiles * p.bh)));
  const index_t splits0 = std::min(stages, want);
  p.pixels_per_split = div_up(stages, splits0) * kPix;
  p.splits = std::max<index_t>(1, div_up(s.pixels, p.pixels_per_split));
  p.part = p.c * p.c + 2 * p.c;
  return p;
}

std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

// Workspace: partials [bh][splits][part] S | gram [bh][c][c] S | q_sq [B·C] S | k_sq [B·C] S | attention [bh][c][c] S
struct Layout {
  std::size_t partial, gram, qsq, ksq, attn, total;
};

Layout make_layout(const AttentionShape& s, const Plan& p, std::size_t elem) {
  Layout l{};
  std::size_t off = 0;
  l.partial = off;
  off += align256(static_cast<std::size_t>(p.bh * p.splits * p.part) * elem);
  l.gram = off;
  off += align256(static_cast<std::size_t>(p.bh * p.c * p.c) * elem);
  l.qsq = off;
  off += align256(static_cast<std::size_t>(s.batch * s.channels) * elem);
  l.ksq = off;
  off += align256(static_cast<std::size_t>(s.batch * s.channels) * elem);
  l.attn = off;
  off += align256(static_cast<std::size_t>(p.bh * p.c * p.c) * elem);
  l.total = off;
  return l;
}

// grid (splits, tiles², B·heads); 256 threads = 16×16, each owning a 2×2 block of the 32×32 Gram tile.
template <typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const T* __restrict__ q, const T* __restrict__ k, index_t C, index_t P, index_t heads,
                        index_t c, index_t tiles, index_t pixels_per_split, index_t splits, index_t part,
                        S* __restrict__ partial) {
  __shared__ S qs[kTile][kPix + 1];
  __shared__ S ks[kTile][kPix + 1];
  const index_t split = blockIdx.x;
  const index_t ti = blockIdx.y / tiles, tj = blockIdx.y % tiles;
  const index_t bh = blockIdx.z, b = bh / heads, h = bh % heads;
  const index_t i0 = ti * kTile, j0 = tj * kTile;
  const T* qh = q + (b * C + h * c) * P;
  const T* kh = k + (b * C + h * c) * P;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const index_t p_begin = split * pixels_per_split, p_end = min(P, p_begin + pixels_per_split);

  S acc00 = 0, acc01 = 0, acc10 = 0, acc11 = 0;
  S sq = 0;  // squared norm of row (tid % 32) of q (tj == 0, tid < 32) or k (ti == 0, 32 ≤ tid < 64)
  for (index_t p0 = p_begin; p0 < p_end; p0 += kPix) {
#pragma unroll
    for (int e = 0; e < kTile * kPix / kThreads; ++e) {
      const int idx = tid + e * kThreads, r = idx / kPix, col = idx % kPix;
      const index_t pix = p0 + col;
      const bool pin = pix < p_end;
      qs[r][col] = (pin && i0 + r < c) ? static_cast<S>(DevIO<T>::load(qh[(i0 + r) * P + pix])) : S(0);
      ks[r][col] = (pin && j0 + r < c) ? static_cast<S>(DevIO<T>::load(kh[(j0 + r) * P + pix])) : S(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int pp = 0; pp < kPix; ++pp) {
      const S a0 = qs[2 * ty][pp], a1 = qs[2 * ty + 1][pp];
      const S b0 = ks[2 * tx][pp], b1 = ks[2 * tx + 1][pp];
      acc00 += a0 * b0;
      acc01 += a0 * b1;
      acc10 += a1 * b0;
      acc11 += a1 * b1;
    }
    if (tj == 0 && tid < kTile) {
      for (int pp = 0; pp < kPix; ++pp) sq += qs[tid][pp] * qs[tid][pp];
    } else if (ti == 0 && tid >= kTile && tid < 2 * kTile) {
      for (int pp = 0; pp < kPix; ++pp) sq += ks[tid - kTile][pp] * ks[tid - kTile][pp];
    }
    __syncthreads();
  }
  S* out = partial + (bh * splits + split) * part;
  const index_t r0 = i0 + 2 * ty, c0 = j0 + 2 * tx;
  if (r0 < c && c0 < c) out[r0 * c + c0] = acc00;
  if (r0 < c && c0 + 1 < c) out[r0 * c + c0 + 1] = acc01;
  if (r0 + 1 < c && c0 < c) out[(r0 + 1) * c + c0] = acc10;
  if (r0 + 1 < c && c0 + 1 < c) out[(r0 + 1) * c + c0 + 1] = acc11;
  if (tj == 0 && tid < kTile && i0 + tid < c) out[c * c + i0 + tid] = sq;
  if (ti == 0 && tid >= kTile && tid < 2 * kTile && j0 + tid - kTile < c) out[c * c + c + j0 + tid - kTile] = sq;
}

// One thread per statistic: the sum over splits, in split order. gram: [bh][c][c]; q_sq, k_sq: [B][C].
template <typename S>
__global__ void reduce_stats_kernel(const S* __restrict__ partial, index_t bh_total, index_t heads, index_t c,
                                    index_t splits, index_t part, S* __restrict__ gram, S* __restrict__ q_sq,
                                    S* __restrict__ k_sq) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= bh_total * part) return;
  const index_t bh = t / part, e = t % part;
  S acc = 0;
  for (index_t s = 0; s < splits; ++s) acc += partial[(bh * splits + s) * part + e];
  const index_t b = bh / heads, h = bh % heads, C = heads * c;
  if (e < c * c) {
    gram[bh * c * c + e] = acc;
  } else if (e < c * c + c) {
    q_sq[b * C + h * c + (e - c * c)] = acc;
  } else {
    k_sq[b * C + h * c + (e - c * c - c)] = acc;
  }
}

template <typename S>
__global__ void softmax_kernel(const S* __restrict__ gram, const S* __restrict__ q_sq, const S* __restrict__ k_sq,
                               const S* __restrict__ tau, index_t bh_total, index_t heads, index_t c,
                               S* __restrict__ attn) {
  const index_t row = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= bh_total * c) return;
  const index_t bh = row / c, i = row % c, b = bh / heads, h = bh % heads, C = heads * c;
  attention_softmax_row(gram + row * c, q_sq[b * C + h * c + i], k_sq + b * C + h * c, tau[h], c, attn + row * c);
}

// grid (pixel tiles of 64, row tiles of 32, B·heads); thread = (pixel lane tid % 64, row group tid / 64 of 8 rows).
template <typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    av_kernel(const S* __restrict__ attn, const T* __restrict__ v, index_t C, index_t P, index_t heads, index_t c,
              T* __restrict__ out) {
  __shared__ S as[kTile][kTile + 1];
  __shared__ S vs[kTile][kPix];
  const index_t p0 = static_cast<index_t>(blockIdx.x) * kPix;
  const index_t i0 = static_cast<index_t>(blockIdx.y) * kTile;
  const index_t bh = blockIdx.z, b = bh / heads, h = bh % heads;
  const S* a = attn + bh * c * c;
  const T* vh = v + (b * C + h * c) * P;
  const int tid = threadIdx.x, lane = tid % kPix, rg = tid / kPix;  // rg: 0..3, 8 rows each
  S acc[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) acc[r] = 0;
  for (index_t j0 = 0; j0 < c; j0 += kTile) {
#pragma unroll
    for (int e = 0; e < kTile * kTile / kThreads; ++e) {
      const int idx = tid + e * kThreads, r = idx / kTile, jj = idx % kTile;
      as[r][jj] = (i0 + r < c && j0 + jj < c) ? a[(i0 + r) * c + j0 + jj] : S(0);
    }
#pragma unroll
    for (int e = 0; e < kTile * kPix / kThreads; ++e) {
      const int idx = tid + e * kThreads, jj = idx / kPix, col = idx % kPix;
      vs[jj][col] = (j0 + jj < c && p0 + col < P) ? static_cast<S>(DevIO<T>::load(vh[(j0 + jj) * P + p0 + col]))
                                                  : S(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int jj = 0; jj < kTile; ++jj) {
      const S vv = vs[jj][lane];
#pragma unroll
      for (int r = 0; r < 8; ++r) acc[r] += as[rg * 8 + r][jj] * vv;
    }
    __syncthreads();
  }
  const index_t pix = p0 + lane;
  if (pix >= P) return;
  T* oh = out + (b * C + h * c) * P;
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const index_t i = i0 + rg * 8 + r;
    if (i < c) oh[i * P + pix] = DevIO<T>::store(acc[r]);
  }
}

template <typename T, typename S>
cudaError_t launch_stats(const T* q, const T* k, const AttentionShape& s, const Plan& p, S* partial, S* gram,
                         S* q_sq, S* k_sq, cudaStream_t stream) {
  if (p.bh > 65535 || p.tiles * p.tiles > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(p.tiles * p.tiles),
                  static_cast<unsigned>(p.bh));
  gram_partial_kernel<T, S><<<grid, kThreads, 0, stream>>>(q, k, s.channels, s.pixels, s.heads, p.c, p.tiles,
                                                           p.pixels_per_split, p.splits, p.part, partial);
  const index_t n = p.bh * p.part;
  reduce_stats_kernel<S><<<static_cast<unsigned>(div_up(n, kThreads)), kThreads, 0, stream>>>(
      partial, p.bh, s.heads, p.c, p.splits, p.part, gram, q_sq, k_sq);
  return cudaGetLastError();
}

template <typename T, typename S>
cudaError_t run_gram(const void* q, const void* k, const AttentionShape& s, void* gram, void* q_sq, void* k_sq,
                     void* workspace, cudaStream_t stream) {
  const Plan p = make_plan(s);
  const Layout l = make_layout(s, p, sizeof(S));
  S* partial = reinterpret_cast<S*>(static_cast<char*>(workspace) + l.partial);
  return launch_stats<T, S>(static_cast<const T*>(q), static_cast<const T*>(k), s, p, partial, static_cast<S*>(gram),
                            static_cast<S*>(q_sq), static_cast<S*>(k_sq), stream);
}

template <typename T, typename S>
cudaError_t run_attention(const void* q, const void* k, const void* v, const void* temperature,
                          const AttentionShape& s, void* out, void* workspace, cudaStream_t stream) {
  const Plan p = make_plan(s);
  const Layout l = make_layout(s, p, sizeof(S));
  char* ws = static_cast<char*>(workspace);
  S* partial = reinterpret_cast<S*>(ws + l.partial);
  S* gram = reinterpret_cast<S*>(ws + l.gram);
  S* qsq = reinterpret_cast<S*>(ws + l.qsq);
  S* ksq = reinterpret_cast<S*>(ws + l.ksq);
  S* attn = reinterpret_cast<S*>(ws + l.attn);
  cudaError_t err = launch_stats<T, S>(static_cast<const T*>(q), static_cast<const T*>(k), s, p, partial, gram, qsq,
                                       ksq, stream);
  if (err != cudaSuccess) return err;
  const index_t rows = p.bh * p.c;
  softmax_kernel<S><<<static_cast<unsigned>(div_up(rows, 128)), 128, 0, stream>>>(
      gram, qsq, ksq, static_cast<const S*>(temperature), p.bh, s.heads, p.c, attn);
  if (s.pixels > 0) {
    const dim3 grid(static_cast<unsigned>(div_up(s.pixels, kPix)), static_cast<unsigned>(p.tiles),
                    static_cast<unsigned>(p.bh));
    av_kernel<T, S><<<grid, kThreads, 0, stream>>>(attn, static_cast<const T*>(v), s.channels, s.pixels, s.heads,
                                                   p.c, static_cast<T*>(out));
  }
  return cudaGetLastError();
}

}  // namespace

std::size_t spectral_attention_cuda_workspace_bytes(Dtype dtype, const AttentionShape& shape) {
  const std::size_t elem = dtype == Dtype::f64 ? sizeof(double) : sizeof(float);
  return make_layout(shape, make_plan(shape), elem).total;
}

cudaError_t gram_and_norms_cuda(Dtype dtype, const void* q, const void* k, const AttentionShape& shape, void* gram,
                                void* q_sq, void* k_sq, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::f32: return run_gram<float, float>(q, k, shape, gram, q_sq, k_sq, workspace, stream);
    case Dtype::f64: return run_gram<double, double>(q, k, shape, gram, q_sq, k_sq, workspace, stream);
    case Dtype::f16: return run_gram<__half, float>(q, k, shape, gram, q_sq, k_sq, workspace, stream);
    case Dtype::bf16: return run_gram<__nv_bfloat16, float>(q, k, shape, gram, q_sq, k_sq, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t spectral_attention_cuda(Dtype dtype, const void* q, const void* k, const void* v, const void* temperature,
                                    const AttentionShape& shape, void* out, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::f32:
      return run_attention<float, float>(q, k, v, temperature, shape, out, workspace, stream);
    case Dtype::f64:
      return run_attention<double, double>(q, k, v, temperature, shape, out, workspace, stream);
    case Dtype::f16:
      return run_attention<__half, float>(q, k, v, temperature, shape, out, workspace, stream);
    case Dtype::bf16:
      return run_attention<__nv_bfloat16, float>(q, k, v, temperature, shape, out, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace spectral
}  // namespace sschsr
