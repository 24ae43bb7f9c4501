// Shared by the CUDA copy kernels: an in-place row copy, a chunk at a time, that never reads a write of
// its own chunk.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace specdec {

// Copies element e (0 <= e < total) of a block's work list inside `rows`, kThreads * kVecsPerThread
// elements per chunk: every thread loads its part of the chunk into registers, the block synchronises,
// then every thread stores, and the block synchronises again before the next chunk. locate(e, from, to)
// gives element e's source and destination offsets in `rows` and returns false for an element that is
// not copied (padding, a row already in place, an out-of-range slot). Call from every thread of the block
// (it synchronises).
template <int kThreads, int kVecsPerThread, typename Vec, typename Locate>
__device__ __forceinline__ void staged_copy(Vec* __restrict__ rows, int64_t total, Locate&& locate) {
  constexpr int64_t kChunk = int64_t(kThreads) * kVecsPerThread;
  for (int64_t start = 0; start < total; start += kChunk) {
    Vec staged[kVecsPerThread];
    int64_t to[kVecsPerThread];
#pragma unroll
    for (int r = 0; r < kVecsPerThread; ++r) {
      const int64_t e = start + int64_t(r) * kThreads + threadIdx.x;
      int64_t from, dest;
      to[r] = -1;
      if (e < total && locate(e, from, dest)) {
        staged[r] = rows[from];
        to[r] = dest;
      }
    }
    __syncthreads();  // every read of this chunk precedes every write of it
#pragma unroll
    for (int r = 0; r < kVecsPerThread; ++r) {
      if (to[r] >= 0) rows[to[r]] = staged[r];
    }
    __syncthreads();  // the next chunk's reads follow this chunk's writes
  }
}

}  // namespace specdec
