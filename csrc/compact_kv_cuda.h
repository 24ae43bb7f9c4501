// KV-cache compaction and slot moves, CUDA launchers: raw pointers and a stream only, so nvcc compiles
// the kernels without torch's headers and the C++ glue calls them with torch's current stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "index_ptr.h"

namespace specdec {

// cache: [planes, S, row_bytes] bytes, planes = L * 2 * B * H (contiguous [L, 2, B, H, S, D]);
// src_pos [B, M], dst_pos [B], counts [B]: int32 or int64 device pointers. One launch for every layer.
cudaError_t launch_compact_kv_cache(void* cache, int64_t planes, int64_t B, int64_t H, int64_t S,
                                    int64_t row_bytes, IndexPtr src_pos, IndexPtr dst_pos, IndexPtr counts,
                                    int64_t M, cudaStream_t stream);

// Buffers of one move_kv_slots launch, passed by value as a kernel argument (2 KiB, under the 4 KiB
// argument limit): no device-side pointer table to build, keep alive or sync on, so the launch can be
// captured in a CUDA graph.
constexpr int kMaxMoveBuffers = 256;
struct MoveBuffers {
  void* ptr[kMaxMoveBuffers];
  int count;
};

// Every buffer: [planes, num_slots, row_bytes] bytes. For i < min(max(num_moves[0], 0), N) (all N when
// num_moves.data is null), copies slot src_slots[i] to dst_slots[i] in every plane of every buffer;
// moves with a slot outside [0, num_slots) or with src == dst do nothing. One launch.
cudaError_t launch_move_kv_slots(const MoveBuffers& buffers, int64_t planes, int64_t num_slots, int64_t row_bytes,
                                 IndexPtr src_slots, IndexPtr dst_slots, IndexPtr num_moves, int64_t N,
                                 cudaStream_t stream);

}  // namespace specdec
