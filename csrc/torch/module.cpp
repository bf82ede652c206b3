// Python module sschsr_deploy._C: importing it registers the sschsr:: operators (TORCH_LIBRARY_FRAGMENT in the
// sibling binding files) and exposes a few facts about the build for `sschsr-deploy info` and the tests.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

bool cuda_built() {
#ifdef SSCHSR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sschsr-deploy native kernels (operators are registered under torch.ops.sschsr)";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build");
  m.def("openmp_max_threads", &openmp_max_threads, "OpenMP thread count the CPU kernels use (1 without OpenMP)");
}
