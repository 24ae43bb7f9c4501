// KV-cache compaction: shared declarations of the torch-facing glue (C++ only, no CUDA headers).
#pragma once
#include <ATen/ATen.h>

namespace specdec {

// Checks ranks, sizes, dtypes and devices; with check_values also the index values (range, strict
// ascent, src_pos[b, i] >= dst_pos[b] + i, 0 <= counts[b] <= M). Throws (TORCH_CHECK) naming the
// argument before anything is written.
void check_compact_args(const at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                        const at::Tensor& counts, bool check_values);

void compact_kv_cache_cpu(at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                          const at::Tensor& counts, bool check);

}  // namespace specdec
