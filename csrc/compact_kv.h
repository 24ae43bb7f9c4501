// KV-cache compaction and slot moves: shared declarations of the torch-facing glue (C++ only, no CUDA
// headers).
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "index_ptr.h"

namespace specdec {

// A kernel's view of an int32 or int64 index tensor (contiguous, dtype checked by the caller).
inline IndexPtr index_ptr(const at::Tensor& t) { return {t.data_ptr(), t.scalar_type() == at::kLong}; }
inline IndexPtr index_ptr(const std::optional<at::Tensor>& t) { return t ? index_ptr(*t) : IndexPtr{nullptr, true}; }

// Checks ranks, sizes, dtypes and devices; with check_values also the index values (range, strict
// ascent, src_pos[b, i] >= dst_pos[b] + i, 0 <= counts[b] <= M). Throws (TORCH_CHECK) naming the
// argument before anything is written.
void check_compact_args(const at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                        const at::Tensor& counts, bool check_values);

void compact_kv_cache_cpu(at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                          const at::Tensor& counts, bool check);

// How move_kv_slots sees every buffer: [planes, num_slots, row_bytes] bytes.
struct SlotGeometry {
  int64_t planes, num_slots, row_bytes;
};

// Checks the buffers (same shape, dtype, device; contiguous; rank >= slot_dims + 2) and the index
// tensors (shapes, dtypes, devices); with check_values also the index values (see move_kv_slots in
// specdec_kernels/kv_compaction.py). Throws naming the argument before anything is written.
SlotGeometry check_move_args(at::TensorList caches, const at::Tensor& src_slots, const at::Tensor& dst_slots,
                             const std::optional<at::Tensor>& num_moves, int64_t slot_dims, bool check_values);

void move_kv_slots_cpu(at::TensorList caches, const at::Tensor& src_slots, const at::Tensor& dst_slots,
                       const std::optional<at::Tensor>& num_moves, int64_t slot_dims, bool check);

}  // namespace specdec
