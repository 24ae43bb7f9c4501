// KV-cache compaction, CUDA launcher: raw pointers and a stream only, so nvcc compiles the kernel
// without torch's headers and the C++ glue calls it with torch's current stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace specdec {

// cache: [planes, S, row_bytes] bytes, planes = L * 2 * B * H (contiguous [L, 2, B, H, S, D]);
// src_pos [B, M], dst_pos [B], counts [B]: int64 device pointers. One launch for every layer.
cudaError_t launch_compact_kv_cache(void* cache, int64_t planes, int64_t B, int64_t H, int64_t S,
                                    int64_t row_bytes, const int64_t* src_pos, const int64_t* dst_pos,
                                    const int64_t* counts, int64_t M, cudaStream_t stream);

}  // namespace specdec
