// Torch-facing glue of the CUDA compaction kernel (compiled only when torch has CUDA): validation,
// device guard, current stream, and the CUDA dispatch-key registration.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "compact_kv.h"
#include "compact_kv_cuda.h"

namespace specdec {

void compact_kv_cache_cuda(at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                           const at::Tensor& counts, bool check) {
  check_compact_args(cache, src_pos, dst_pos, counts, check);
  const c10::cuda::CUDAGuard guard(cache.device());
  const int64_t planes = cache.size(0) * 2 * cache.size(2) * cache.size(3);
  const cudaError_t err = launch_compact_kv_cache(
      cache.data_ptr(), planes, cache.size(2), cache.size(3), cache.size(4), cache.size(5) * cache.element_size(),
      src_pos.data_ptr<int64_t>(), dst_pos.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), src_pos.size(1),
      at::cuda::getCurrentCUDAStream(cache.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "compact_kv_cache: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace specdec

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("compact_kv_cache", &specdec::compact_kv_cache_cuda); }
