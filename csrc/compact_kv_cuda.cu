// KV-cache compaction, CUDA. One thread block per (layer, key/value, batch, head) plane; all planes of
// all layers in one launch.
//
// In place yet race-free: a block moves its kept rows in chunks. Every thread first loads its part of
// the chunk into registers, the block synchronises, then every thread stores. A chunk's sources are
// never an earlier chunk's destinations (src_pos[b, i] >= dst_pos[b] + i and src_pos ascends), and
// within a chunk all reads finish before any write, so no thread reads a slot another already wrote.
#include <cstdint>

#include "compact_kv_cuda.h"
#include "staged_copy.cuh"
#include "vector_width.cuh"

namespace specdec {
namespace {

constexpr int kThreads = 256;
constexpr int kVecsPerThread = 4;  // a chunk is 256 * 4 vectors (16 KiB with 16-byte vectors)

template <typename Vec>
__global__ void compact_kv_kernel(Vec* __restrict__ cache,  // [planes, S, row_vecs]
                                  IndexPtr src,              // [B, M], int32 or int64
                                  IndexPtr dst,              // [B]
                                  IndexPtr cnt,              // [B]
                                  int64_t B, int64_t H, int64_t S, int64_t row_vecs, int64_t M) {
  const int64_t plane = blockIdx.x;
  const int64_t b = (plane / H) % B;
  // Clamped to src_pos's width: an unchecked call (check=false) with counts[b] > M must not read
  // past the end of src_pos (negative counts copy nothing).
  const int64_t c = cnt[b];
  const int64_t n = c < 0 ? 0 : (c > M ? M : c);
  const int64_t d = dst[b];
  // No destination d + i (0 <= i < M) lies in [0, S): nothing to copy, and d + i cannot overflow below.
  // The whole block returns (d is the block's), so no thread misses a __syncthreads.
  if (d <= -M || d >= S) return;
  Vec* rows = cache + plane * S * row_vecs;  // int64: planes * S * row_vecs can pass 2^31
  staged_copy<kThreads, kVecsPerThread>(rows, n * row_vecs, [&](int64_t e, int64_t& from, int64_t& to) {
    const int64_t i = e / row_vecs, col = e % row_vecs;
    const int64_t s = src[b * M + i];
    // Rows already in place are skipped; out-of-range rows (unchecked calls) are never touched.
    if (s == d + i || s < 0 || s >= S || d + i < 0 || d + i >= S) return false;
    from = s * row_vecs + col;
    to = (d + i) * row_vecs + col;
    return true;
  });
}

}  // namespace

cudaError_t launch_compact_kv_cache(void* cache, int64_t planes, int64_t B, int64_t H, int64_t S,
                                    int64_t row_bytes, IndexPtr src_pos, IndexPtr dst_pos, IndexPtr counts,
                                    int64_t M, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  return with_widest_vector(row_bytes, reinterpret_cast<uintptr_t>(cache), [&](auto vec) {
    using Vec = decltype(vec);
    compact_kv_kernel<Vec><<<static_cast<unsigned int>(planes), kThreads, 0, stream>>>(
        static_cast<Vec*>(cache), src_pos, dst_pos, counts, B, H, S, row_bytes / int64_t(sizeof(Vec)), M);
    return cudaGetLastError();
  });
}

}  // namespace specdec
