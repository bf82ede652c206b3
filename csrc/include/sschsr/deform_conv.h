// Modulated deformable convolution (DCNv2): torch-free parameters, index math and the CPU / CUDA entry points.
//
// Semantics (= sschsr_deploy/ops/deform_conv.py::modulated_deform_conv2d_reference = torchvision.ops.deform_conv2d):
//   input  (B, C, H, W), any strides (the kernels read it through in_stride_*; NCHW and NHWC are both fast on the CPU)
//   offset (B, 2·G·kh·kw, Ho, Wo) contiguous: channel (g·kh·kw + tap)·2 + {0: dy, 1: dx}, tap = i·kw + j
//   mask   (B, G·kh·kw, Ho, Wo) contiguous, or null (= all ones): channel g·kh·kw + tap
//   weight (O, C/groups, kh, kw) contiguous; bias (O) or null; output (B, O, Ho, Wo) contiguous
// Output (y, x), tap (i, j), channel c of offset group g = c / (C/G) samples the input bilinearly (zero outside) at
//   (y·sh − ph + i·dh + dy, x·sw − pw + j·dw + dx),
// multiplies the sample by the mask, and contracts over (c, i, j) with the weight of c's convolution group.
#pragma once

#include <cstddef>

#include "sschsr/common.h"

struct CUstream_st;  // = cudaStream_t, declared here so that this header needs no CUDA include

namespace sschsr {

struct DeformConv2dParams {
  index_t batch = 0, in_channels = 0, height = 0, width = 0;
  index_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;
  index_t dilation_h = 1, dilation_w = 1;
  index_t groups = 1, offset_groups = 1;
  index_t out_h = 0, out_w = 0;  // set by deform_conv2d_fill_output_size
  // Element strides of the input; deform_conv2d_set_contiguous_strides fills the NCHW ones.
  index_t in_stride_n = 0, in_stride_c = 0, in_stride_h = 0, in_stride_w = 0;
  int num_threads = 0;          // CPU only: OpenMP threads (0 = OpenMP's default)
  bool cpu_portable_only = false;  // CPU only: use the portable micro-kernels even where AVX2 is available (tests)
};

// Output extent of a convolution along one axis; ≤ 0 when the (padded) input is smaller than the dilated kernel.
SSCHSR_INLINE index_t deform_conv2d_out_size(index_t in, index_t kernel, index_t stride, index_t pad, index_t dilation) {
  const index_t span = dilation * (kernel - 1) + 1;
  const index_t padded = in + 2 * pad;
  return padded < span ? 0 : (padded - span) / stride + 1;
}

inline void deform_conv2d_fill_output_size(DeformConv2dParams& p) {
  p.out_h = deform_conv2d_out_size(p.height, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  p.out_w = deform_conv2d_out_size(p.width, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
}

inline void deform_conv2d_set_contiguous_strides(DeformConv2dParams& p) {
  p.in_stride_w = 1;
  p.in_stride_h = p.width;
  p.in_stride_c = p.height * p.width;
  p.in_stride_n = p.in_channels * p.height * p.width;
}

// nullptr when the parameters describe a valid convolution (output size filled in), otherwise the reason.
inline const char* deform_conv2d_check(const DeformConv2dParams& p) {
  if (p.batch < 0 || p.in_channels < 0 || p.height < 0 || p.width < 0 || p.out_channels < 0) return "negative size";
  if (p.kernel_h <= 0 || p.kernel_w <= 0) return "kernel size must be positive";
  if (p.stride_h <= 0 || p.stride_w <= 0) return "stride must be positive";
  if (p.dilation_h <= 0 || p.dilation_w <= 0) return "dilation must be positive";
  if (p.pad_h < 0 || p.pad_w < 0) return "padding must be non-negative";
  if (p.groups <= 0 || p.offset_groups <= 0) return "groups and offset_groups must be positive";
  if (p.in_channels % p.groups != 0) return "in_channels must be divisible by groups";
  if (p.out_channels % p.groups != 0) return "out_channels must be divisible by groups";
  if (p.in_channels % p.offset_groups != 0) return "in_channels must be divisible by offset_groups";
  if (p.out_h != deform_conv2d_out_size(p.height, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h) ||
      p.out_w != deform_conv2d_out_size(p.width, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w))
    return "out_h/out_w do not match the convolution geometry";
  if (p.out_h <= 0 || p.out_w <= 0) return "the padded input is smaller than the dilated kernel";
  return nullptr;
}

// ---- index math shared by the kernels and the tests ----

// Channel of the (dy: comp = 0, dx: comp = 1) offset of offset group g and kernel tap `tap` (= i·kw + j).
SSCHSR_INLINE index_t deform_conv2d_offset_channel(index_t g, index_t tap, index_t taps, int comp) {
  return (g * taps + tap) * 2 + comp;
}

// Channel of the mask of offset group g and kernel tap `tap`.
SSCHSR_INLINE index_t deform_conv2d_mask_channel(index_t g, index_t tap, index_t taps) { return g * taps + tap; }

// Position (without the learned offset) that output (oy, ox) reads for kernel tap (i, j).
SSCHSR_INLINE index_t deform_conv2d_base_y(const DeformConv2dParams& p, index_t oy, index_t i) {
  return oy * p.stride_h - p.pad_h + i * p.dilation_h;
}
SSCHSR_INLINE index_t deform_conv2d_base_x(const DeformConv2dParams& p, index_t ox, index_t j) {
  return ox * p.stride_w - p.pad_w + j * p.dilation_w;
}

// ---- CPU (C++17 + OpenMP; csrc/cpu/deform_conv_kernel.cpp) ----
// Tiled and multi-threaded: gathers the modulated samples of a tile of output pixels into a per-thread buffer and
// contracts them with the packed weights by a register-blocked micro-kernel (AVX2/FMA when the CPU has it). No
// im2col buffer; when the input is not channels-last one NHWC copy of one image at a time is made.
// Throws std::invalid_argument when deform_conv2d_check fails. mask and bias may be null.
void modulated_deform_conv2d_cpu(const DeformConv2dParams& p, const float* input, const float* offset,
                                 const float* mask, const float* weight, const float* bias, float* output);
void modulated_deform_conv2d_cpu(const DeformConv2dParams& p, const double* input, const double* offset,
                                 const double* mask, const double* weight, const double* bias, double* output);

// The instruction set the CPU kernel dispatches to on this machine: "avx2" or "generic".
const char* modulated_deform_conv2d_cpu_isa();

// ---- CUDA (csrc/cuda/deform_conv_kernel.cu; unverified on hardware) ----
enum class DeformConvDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Bytes of device workspace the CUDA kernel needs (the weights repacked in the compute layout).
std::size_t modulated_deform_conv2d_cuda_workspace_bytes(const DeformConv2dParams& p, DeformConvDType dtype);

// Launches on `stream`. All pointers are device pointers of `dtype` (mask and bias may be null); `workspace` holds at
// least modulated_deform_conv2d_cuda_workspace_bytes bytes. Returns the cudaError_t of the launches (0 = success);
// returns cudaErrorInvalidValue (1) when deform_conv2d_check fails.
int modulated_deform_conv2d_cuda(const DeformConv2dParams& p, DeformConvDType dtype, const void* input,
                                 const void* offset, const void* mask, const void* weight, const void* bias,
                                 void* output, void* workspace, CUstream_st* stream);

}  // namespace sschsr
