// Torch-facing glue of the CUDA compaction and slot-move kernels (compiled only when torch has CUDA):
// validation, device guard, current stream, and the CUDA dispatch-key registration.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

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
      index_ptr(src_pos), index_ptr(dst_pos), index_ptr(counts), src_pos.size(1),
      at::cuda::getCurrentCUDAStream(cache.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "compact_kv_cache: CUDA launch failed: ", cudaGetErrorString(err));
}

void move_kv_slots_cuda(at::TensorList caches, const at::Tensor& src_slots, const at::Tensor& dst_slots,
                        const std::optional<at::Tensor>& num_moves, int64_t slot_dims, bool check) {
  const SlotGeometry g = check_move_args(caches, src_slots, dst_slots, num_moves, slot_dims, check);
  const c10::cuda::CUDAGuard guard(caches[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(caches[0].device().index()).stream();
  // One launch for up to kMaxMoveBuffers buffers (a stacked cache, or K and V lists of 128 layers);
  // longer lists take one launch per group: buffers are disjoint, so the groups do not interact.
  for (size_t first = 0; first < caches.size(); first += kMaxMoveBuffers) {
    MoveBuffers buffers{};
    buffers.count = static_cast<int>(std::min<size_t>(kMaxMoveBuffers, caches.size() - first));
    for (int k = 0; k < buffers.count; ++k) buffers.ptr[k] = caches[first + k].data_ptr();
    TORCH_CHECK_VALUE(buffers.count * g.planes <= std::numeric_limits<int32_t>::max(),
                      "move_kv_slots: too many planes for one launch (", buffers.count * g.planes, ")");
    const cudaError_t err = launch_move_kv_slots(buffers, g.planes, g.num_slots, g.row_bytes, index_ptr(src_slots),
                                                 index_ptr(dst_slots), index_ptr(num_moves), src_slots.numel(), stream);
    TORCH_CHECK(err == cudaSuccess, "move_kv_slots: CUDA launch failed: ", cudaGetErrorString(err));
  }
}

}  // namespace specdec

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("compact_kv_cache", &specdec::compact_kv_cache_cuda);
  m.impl("move_kv_slots", &specdec::move_kv_slots_cuda);
}
