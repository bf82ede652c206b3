// Modulated deformable convolution on CUDA: fused bilinear gather + tile GEMM (tensor cores for fp16 / bf16).
//
// UNVERIFIED ON HARDWARE: written and compiled (sm_80, sm_90) on a machine without a GPU and reviewed by reading only;
// tests/test_deform_conv_gpu.py is what must run on a GPU before this kernel is trusted.
//
// Design. The reduction axis is k = tap·Cg + c (tap = i·kw + j, c local to the conv group). Each thread block owns a
// tile of kBM output pixels × kBN output channels of one image and one conv group. For every kBK-deep slice of k it
//   1. gathers the modulated bilinear samples of its kBM pixels × kBK reduction indices straight from the input into
//      shared memory (A, row-major, pixels × k): each thread handles one pixel and 8 consecutive k, recomputing the
//      sample position and corner weights only when (tap, offset group) changes;
//   2. copies the matching kBK × kBN slice of the weights (repacked once per call into a zero-padded
//      [group][o][k] buffer in the workspace) into shared memory (B, stored o-major = column-major K × N);
//   3. multiplies: fp16 / bf16 with WMMA 16×16×16 tensor-core fragments and fp32 accumulators (8 warps, each a
//      16 × 32 sub-tile); fp32 / fp64 with a SIMT 4 × 4 register tile per thread (exact fp32 / fp64 accumulation).
// The samples never go through global memory (no im2col); the accumulators (+ bias) are written once, NCHW. Samples are
// computed in fp32 (fp64 for fp64) and rounded to the input dtype only when stored for the tensor cores.
// Launches go to the stream passed in (the torch binding passes the current stream).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <climits>
#include <cstdint>

#include "sschsr/bilinear.h"
#include "sschsr/deform_conv.h"

namespace sschsr {
namespace {

constexpr int kBM = 64;        // output pixels per block
constexpr int kBN = 64;        // output channels per block
constexpr int kBK = 32;        // reduction depth per stage
constexpr int kThreads = 256;  // 8 warps
constexpr int kPerThread = 8;  // consecutive k gathered by one thread per stage
static_assert(kBM * kBK == kThreads * kPerThread, "gather mapping: one pixel × 8 k per thread");
static_assert(kBN * kBK == kThreads * kPerThread, "weight-copy mapping: one output channel × 8 k per thread");

// Scalar type traits: accumulation / sampling type and conversions (explicit: torch builds with
// __CUDA_NO_HALF_CONVERSIONS__, so no implicit half <-> float conversions are available).
template <typename T>
struct Num;
template <>
struct Num<float> {
  using acc = float;
  static constexpr bool kTensorCore = false;
  __device__ static float to_acc(float v) { return v; }
  __device__ static float from_acc(float v) { return v; }
};
template <>
struct Num<double> {
  using acc = double;
  static constexpr bool kTensorCore = false;
  __device__ static double to_acc(double v) { return v; }
  __device__ static double from_acc(double v) { return v; }
};
template <>
struct Num<__half> {
  using acc = float;
  static constexpr bool kTensorCore = true;
  __device__ static float to_acc(__half v) { return __half2float(v); }
  __device__ static __half from_acc(float v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static constexpr bool kTensorCore = true;
  __device__ static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

// Eight consecutive elements, moved with 16-byte vector accesses (both ends must be 16-byte aligned).
template <typename T>
struct alignas(16) Vec8 {
  T v[kPerThread];
};

// Shared-memory geometry. Rows are padded by 16 bytes: keeps 16-byte alignment for Vec8 and WMMA (ldm multiple of
// 8 halves) and spreads rows over banks.
template <typename T>
struct Smem {
  static constexpr int kLd = kBK + 16 / static_cast<int>(sizeof(T));  // row stride of A and B (elements)
  static constexpr int kA = kBM * kLd;                                 // A: kBM rows (pixels) × kBK
  static constexpr int kB = kBN * kLd;                                 // B: kBN rows (output channels) × kBK
  static constexpr int kCLd = kBM + 4;                                 // epilogue tile, column-major (o-major)
  static constexpr int kOperandBytes = (kA + kB) * static_cast<int>(sizeof(T));
  static constexpr int kEpilogueBytes = Num<T>::kTensorCore ? kBN * kCLd * 4 : 0;
  static constexpr int kBytes = kOperandBytes > kEpilogueBytes ? kOperandBytes : kEpilogueBytes;
  static_assert(kBytes <= 48 * 1024, "static shared memory limit");
};

template <typename T>
struct Args {
  const T* __restrict__ input;
  const T* __restrict__ offset;
  const T* __restrict__ mask;  // may be null
  const T* __restrict__ bias;  // may be null
  const T* __restrict__ wpack;  // [groups][Og_pad][Kpad]
  T* __restrict__ out;
  long long in_sn, in_sc, in_sh, in_sw;
  int C, H, W, O, G, KW, K, Cg, Og, cpg, Kfull, Kpad, Wo, HoWo, groups;
  int sh, sw, ph, pw, dh, dw;
  int tiles_p, tiles_o;
};

// Weights (O, Cg, KH, KW) → wpack[gi][o][k = tap·Cg + c], zero for o ≥ Og or k ≥ Kfull.
template <typename T>
__global__ void pack_weights_kernel(const T* __restrict__ weight, T* __restrict__ wpack, int groups, int Og, int Og_pad,
                                    int Cg, int K, int Kpad) {
  const long long total = static_cast<long long>(groups) * Og_pad * Kpad;
  const int Kfull = Cg * K;
  for (long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int k = static_cast<int>(idx % Kpad);
    const long long row = idx / Kpad;  // gi * Og_pad + o
    const int o = static_cast<int>(row % Og_pad);
    const int gi = static_cast<int>(row / Og_pad);
    T v = Num<T>::from_acc(typename Num<T>::acc(0));
    if (o < Og && k < Kfull) {
      const int t = k / Cg;
      const int c = k - t * Cg;
      v = weight[(static_cast<long long>(gi * Og + o) * Cg + c) * K + t];
    }
    wpack[idx] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) deform_conv_kernel(const Args<T> a) {
  using Acc = typename Num<T>::acc;
  using S = Smem<T>;
  __shared__ __align__(128) unsigned char smem_raw[S::kBytes];
  T* As = reinterpret_cast<T*>(smem_raw);
  T* Bs = As + S::kA;

  // Block → (image b, conv group gi, pixel tile, output-channel tile); the output-channel tile varies fastest so that
  // the blocks gathering the same samples run together and share the input through L2.
  const int tid = threadIdx.x;
  long long bid = blockIdx.x;
  const int o_tile = static_cast<int>(bid % a.tiles_o);
  bid /= a.tiles_o;
  const int p_tile = static_cast<int>(bid % a.tiles_p);
  bid /= a.tiles_p;
  const int gi = static_cast<int>(bid % a.groups);
  const int b = static_cast<int>(bid / a.groups);
  const int p0 = p_tile * kBM;
  const int o0 = o_tile * kBN;

  // Gather role: pixel g_pi, reduction indices [k0 + g_kq, k0 + g_kq + 8) of each stage.
  const int g_pi = tid % kBM;
  const int g_kq = (tid / kBM) * kPerThread;
  const int g_p = p0 + g_pi;
  const bool g_valid = g_p < a.HoWo;
  const int g_oy = g_valid ? g_p / a.Wo : 0;
  const int g_ox = g_valid ? g_p - g_oy * a.Wo : 0;
  const T* __restrict__ img = a.input + b * a.in_sn;
  const long long off_base = static_cast<long long>(b) * 2 * a.G * a.K;  // first offset channel of image b
  const long long msk_base = static_cast<long long>(b) * a.G * a.K;

  // Weight-copy role: output channel w_o, reduction indices [k0 + w_kq, k0 + w_kq + 8).
  const int w_o = tid / (kBK / kPerThread);
  const int w_kq = (tid % (kBK / kPerThread)) * kPerThread;
  const T* __restrict__ wrow = a.wpack + (static_cast<long long>(gi) * (a.tiles_o * kBN) + o0 + w_o) * a.Kpad;

  // Compute role.
  const int warp = tid / 32;
  namespace wmma = nvcuda::wmma;
  constexpr bool kTC = Num<T>::kTensorCore;
  // SIMT: rows (pixels) s_m + 16·i, columns (output channels) s_n + 16·j.
  const int s_m = tid % 16;
  const int s_n = tid / 16;
  Acc acc_simt[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc_simt[i][j] = Acc(0);
  // Tensor cores: warp (w_m, w_n) owns pixels w_m·16 … +16 and output channels w_n·32 … +32 (two fragments).
  const int w_m = warp % 4;
  const int w_n = warp / 4;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_tc[2];
  if constexpr (kTC) {
    wmma::fill_fragment(acc_tc[0], 0.0f);
    wmma::fill_fragment(acc_tc[1], 0.0f);
  }

  for (int k0 = 0; k0 < a.Kpad; k0 += kBK) {
    // ---- 1. gather A[g_pi][g_kq .. g_kq + 8) ----
    {
      Vec8<T> vals;
      int k = k0 + g_kq;
      int t = k / a.Cg;
      int cl = k - t * a.Cg;
      int cached = -1;  // (tap, offset group) whose corners are loaded below
      Acc w00 = Acc(0), w01 = Acc(0), w10 = Acc(0), w11 = Acc(0);
      long long at = 0;
      bool v00 = false, v01 = false, v10 = false, v11 = false;
#pragma unroll
      for (int e = 0; e < kPerThread; ++e, ++k) {
        Acc val = Acc(0);
        if (g_valid && k < a.Kfull) {
          const int c = gi * a.Cg + cl;
          const int og = c / a.cpg;
          const int key = t * a.G + og;
          if (key != cached) {
            cached = key;
            const int ti = t / a.KW;
            const int tj = t - ti * a.KW;
            const long long och = off_base + deform_conv2d_offset_channel(og, t, a.K, 0);
            const Acc dy = Num<T>::to_acc(a.offset[och * a.HoWo + g_p]);
            const Acc dx = Num<T>::to_acc(a.offset[(och + 1) * a.HoWo + g_p]);
            const Acc m = a.mask != nullptr
                              ? Num<T>::to_acc(a.mask[(msk_base + deform_conv2d_mask_channel(og, t, a.K)) * a.HoWo + g_p])
                              : Acc(1);
            const Acc y = static_cast<Acc>(g_oy * a.sh - a.ph + ti * a.dh) + dy;
            const Acc x = static_cast<Acc>(g_ox * a.sw - a.pw + tj * a.dw) + dx;
            const BilinearCorners<Acc> s = bilinear_corners(y, x, a.H, a.W);
            w00 = s.w00 * m, w01 = s.w01 * m, w10 = s.w10 * m, w11 = s.w11 * m;
            v00 = s.v00, v01 = s.v01, v10 = s.v10, v11 = s.v11;
            at = static_cast<long long>(s.y0) * a.in_sh + static_cast<long long>(s.x0) * a.in_sw;
          }
          const T* __restrict__ src = img + c * a.in_sc + at;
          if (v00) val += w00 * Num<T>::to_acc(src[0]);
          if (v01) val += w01 * Num<T>::to_acc(src[a.in_sw]);
          if (v10) val += w10 * Num<T>::to_acc(src[a.in_sh]);
          if (v11) val += w11 * Num<T>::to_acc(src[a.in_sh + a.in_sw]);
        }
        vals.v[e] = Num<T>::from_acc(val);
        if (++cl == a.Cg) {
          cl = 0;
          ++t;
        }
      }
      *reinterpret_cast<Vec8<T>*>(As + g_pi * S::kLd + g_kq) = vals;
    }
    // ---- 2. copy B[w_o][w_kq .. w_kq + 8) (zero padding is in the packed weights) ----
    *reinterpret_cast<Vec8<T>*>(Bs + w_o * S::kLd + w_kq) = *reinterpret_cast<const Vec8<T>*>(wrow + k0 + w_kq);
    __syncthreads();

    // ---- 3. multiply-accumulate ----
    if constexpr (kTC) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, As + (w_m * 16) * S::kLd + kk, S::kLd);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, Bs + (w_n * 32 + j * 16) * S::kLd + kk, S::kLd);
          wmma::mma_sync(acc_tc[j], fa, fb, acc_tc[j]);
        }
      }
#elif defined(__CUDA_ARCH__)
      __trap();  // fp16 / bf16 tensor-core path needs sm_80 or newer (the build targets sm_80 and sm_90)
#endif
    } else {
#pragma unroll 8
      for (int kk = 0; kk < kBK; ++kk) {
        Acc av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = Num<T>::to_acc(As[(s_m + 16 * i) * S::kLd + kk]);
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = Num<T>::to_acc(Bs[(s_n + 16 * j) * S::kLd + kk]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc_simt[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();  // A and B are overwritten by the next stage (and by the epilogue tile)
  }

  // ---- epilogue: out[b][gi·Og + o][p] = acc + bias ----
  T* __restrict__ out = a.out + (static_cast<long long>(b) * a.O + gi * a.Og) * a.HoWo;
  if constexpr (kTC) {
    float* Cs = reinterpret_cast<float*>(smem_raw);  // column-major: Cs[o * kCLd + pixel]
    wmma::store_matrix_sync(Cs + (w_n * 32) * S::kCLd + w_m * 16, acc_tc[0], S::kCLd, wmma::mem_col_major);
    wmma::store_matrix_sync(Cs + (w_n * 32 + 16) * S::kCLd + w_m * 16, acc_tc[1], S::kCLd, wmma::mem_col_major);
    __syncthreads();
    for (int idx = tid; idx < kBM * kBN; idx += kThreads) {
      const int o = o0 + idx / kBM;
      const int p = p0 + idx % kBM;
      if (o < a.Og && p < a.HoWo) {
        float v = Cs[(idx / kBM) * S::kCLd + idx % kBM];
        if (a.bias != nullptr) v += Num<T>::to_acc(a.bias[gi * a.Og + o]);
        out[static_cast<long long>(o) * a.HoWo + p] = Num<T>::from_acc(v);
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = o0 + s_n + 16 * j;
      if (o >= a.Og) continue;
      const Acc bv = a.bias != nullptr ? Num<T>::to_acc(a.bias[gi * a.Og + o]) : Acc(0);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int p = p0 + s_m + 16 * i;
        if (p < a.HoWo) out[static_cast<long long>(o) * a.HoWo + p] = Num<T>::from_acc(acc_simt[i][j] + bv);
      }
    }
  }
}

int round_up_int(long long v, int m) { return static_cast<int>((v + m - 1) / m * m); }

struct Geometry {
  long long Cg, Og, K, Kfull, Kpad, Og_pad, HoWo;
};

Geometry geometry(const DeformConv2dParams& p) {
  Geometry g;
  g.Cg = p.in_channels / p.groups;
  g.Og = p.out_channels / p.groups;
  g.K = p.kernel_h * p.kernel_w;
  g.Kfull = g.K * g.Cg;
  g.Kpad = (g.Kfull + kBK - 1) / kBK * kBK;
  g.Og_pad = (g.Og + kBN - 1) / kBN * kBN;
  g.HoWo = p.out_h * p.out_w;
  return g;
}

std::size_t elem_size(DeformConvDType d) {
  switch (d) {
    case DeformConvDType::kFloat64:
      return 8;
    case DeformConvDType::kFloat32:
      return 4;
    default:
      return 2;
  }
}

template <typename T>
int launch(const DeformConv2dParams& p, const void* input, const void* offset, const void* mask, const void* weight,
           const void* bias, void* output, void* workspace, cudaStream_t stream) {
  const Geometry g = geometry(p);
  // 32-bit indices inside a block: everything that is multiplied out in int must fit.
  if (g.HoWo > INT_MAX / 2 || g.Kpad > INT_MAX / 2 || p.in_channels > INT_MAX / 2 || p.out_channels > INT_MAX / 2 ||
      static_cast<long long>(p.offset_groups) * g.K > INT_MAX / 2 || p.height > INT_MAX / 2 ||
      p.width > INT_MAX / 2 || p.batch > INT_MAX / 2)
    return static_cast<int>(cudaErrorInvalidValue);
  if (reinterpret_cast<std::uintptr_t>(workspace) % 16 != 0) return static_cast<int>(cudaErrorMisalignedAddress);
  T* wpack = static_cast<T*>(workspace);
  const long long pack_total = p.groups * g.Og_pad * g.Kpad;
  if (pack_total > 0) {
    const long long blocks = (pack_total + 255) / 256;
    pack_weights_kernel<T><<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(
        static_cast<const T*>(weight), wpack, static_cast<int>(p.groups), static_cast<int>(g.Og),
        static_cast<int>(g.Og_pad), static_cast<int>(g.Cg), static_cast<int>(g.K), static_cast<int>(g.Kpad));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  Args<T> a;
  a.input = static_cast<const T*>(input);
  a.offset = static_cast<const T*>(offset);
  a.mask = static_cast<const T*>(mask);
  a.bias = static_cast<const T*>(bias);
  a.wpack = wpack;
  a.out = static_cast<T*>(output);
  a.in_sn = p.in_stride_n, a.in_sc = p.in_stride_c, a.in_sh = p.in_stride_h, a.in_sw = p.in_stride_w;
  a.C = static_cast<int>(p.in_channels), a.H = static_cast<int>(p.height), a.W = static_cast<int>(p.width);
  a.O = static_cast<int>(p.out_channels), a.G = static_cast<int>(p.offset_groups);
  a.KW = static_cast<int>(p.kernel_w), a.K = static_cast<int>(g.K), a.Cg = static_cast<int>(g.Cg);
  a.Og = static_cast<int>(g.Og), a.cpg = static_cast<int>(p.in_channels / p.offset_groups);
  a.Kfull = static_cast<int>(g.Kfull), a.Kpad = static_cast<int>(g.Kpad);
  a.Wo = static_cast<int>(p.out_w), a.HoWo = static_cast<int>(g.HoWo), a.groups = static_cast<int>(p.groups);
  a.sh = static_cast<int>(p.stride_h), a.sw = static_cast<int>(p.stride_w);
  a.ph = static_cast<int>(p.pad_h), a.pw = static_cast<int>(p.pad_w);
  a.dh = static_cast<int>(p.dilation_h), a.dw = static_cast<int>(p.dilation_w);
  a.tiles_p = round_up_int(g.HoWo, kBM) / kBM;
  a.tiles_o = static_cast<int>(g.Og_pad / kBN);
  const long long blocks = static_cast<long long>(p.batch) * p.groups * a.tiles_p * a.tiles_o;
  if (blocks == 0) return static_cast<int>(cudaSuccess);
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
  deform_conv_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

std::size_t modulated_deform_conv2d_cuda_workspace_bytes(const DeformConv2dParams& p, DeformConvDType dtype) {
  const Geometry g = geometry(p);
  return static_cast<std::size_t>(p.groups * g.Og_pad * g.Kpad) * elem_size(dtype);
}

int modulated_deform_conv2d_cuda(const DeformConv2dParams& p, DeformConvDType dtype, const void* input,
                                 const void* offset, const void* mask, const void* weight, const void* bias,
                                 void* output, void* workspace, CUstream_st* stream) {
  if (deform_conv2d_check(p) != nullptr) return static_cast<int>(cudaErrorInvalidValue);
  switch (dtype) {
    case DeformConvDType::kFloat32:
      return launch<float>(p, input, offset, mask, weight, bias, output, workspace, stream);
    case DeformConvDType::kFloat64:
      return launch<double>(p, input, offset, mask, weight, bias, output, workspace, stream);
    case DeformConvDType::kFloat16:
      return launch<__half>(p, input, offset, mask, weight, bias, output, workspace, stream);
    case DeformConvDType::kBFloat16:
      return launch<__nv_bfloat16>(p, input, offset, mask, weight, bias, output, workspace, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace sschsr
