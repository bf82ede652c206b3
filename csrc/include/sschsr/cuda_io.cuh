// Element load/store for the CUDA kernels: every storage type is read into and written from its accumulation type
// (float for the 16-bit types, the type itself otherwise), so one kernel template serves fp64/fp32/fp16/bf16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sschsr {

template <typename T>
struct DevIO;
template <>
struct DevIO<float> {
  __device__ static float load(float x) { return x; }
  __device__ static float store(float v) { return v; }
};
template <>
struct DevIO<double> {
  __device__ static double load(double x) { return x; }
  __device__ static double store(double v) { return v; }
};
template <>
struct DevIO<__half> {
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct DevIO<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

}  // namespace sschsr
