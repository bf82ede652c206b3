// Shared macros of the torch-free kernels: one header so CPU (.cpp) and CUDA (.cu) code use the same inline math.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SSCHSR_HOST_DEVICE __host__ __device__
#define SSCHSR_DEVICE __device__
#else
#define SSCHSR_HOST_DEVICE
#define SSCHSR_DEVICE
#endif

#define SSCHSR_INLINE SSCHSR_HOST_DEVICE inline

#include <cstdint>

namespace sschsr {
using index_t = std::int64_t;
}  // namespace sschsr
