// KV moves by cache slot, CUDA. One launch for every buffer (layer, K and V) and every move.
//
// Grid: x = (buffer, plane), y = a slice of the row's columns. Slices and planes are disjoint memory, so
// blocks never race; inside a block the moves run in index order, a chunk at a time: every thread loads
// its part of the chunk into registers, the block synchronises, then every thread stores. So a move
// never sees a later move's write (a later move may overwrite an earlier one's source: the accepted-path
// compaction case), and the host-checked contract (distinct destinations, no source that an earlier move
// wrote) makes this equal to applying the moves one after another.
#include <cstdint>

#include "compact_kv_cuda.h"
#include "staged_copy.cuh"
#include "vector_width.cuh"

namespace specdec {
namespace {

constexpr int kThreads = 256;
constexpr int kVecsPerThread = 4;       // a chunk is 256 * 4 vectors (16 KiB with 16-byte vectors)
constexpr int64_t kSliceVecs = 64;      // columns per block: 1 KiB of a row with 16-byte vectors
constexpr int64_t kMaxGridY = 65535;

template <typename Vec>
__global__ void move_kv_slots_kernel(MoveBuffers buffers, int64_t planes, int64_t num_slots, int64_t row_vecs,
                                     int64_t slice_vecs, IndexPtr src, IndexPtr dst, IndexPtr num_moves,
                                     int64_t N) {
  const int64_t buffer = blockIdx.x / planes, plane = blockIdx.x % planes;
  // num_moves is read here, on the device, so the host never waits for it; unchecked values are clamped.
  int64_t n = N;
  if (num_moves.data != nullptr) {
    const int64_t m = num_moves[0];
    n = m < 0 ? 0 : (m > N ? N : m);
  }
  const int64_t first_col = int64_t(blockIdx.y) * slice_vecs;
  const int64_t width = row_vecs - first_col < slice_vecs ? row_vecs - first_col : slice_vecs;
  // int64 offsets: planes * num_slots * row_vecs can pass 2^31
  Vec* rows = static_cast<Vec*>(buffers.ptr[buffer]) + plane * num_slots * row_vecs + first_col;
  staged_copy<kThreads, kVecsPerThread>(rows, n * width, [&](int64_t e, int64_t& from, int64_t& to) {
    const int64_t i = e / width, c = e % width;
    const int64_t s = src[i], d = dst[i];
    // Padding (-1), no-op moves and, in unchecked calls, out-of-range slots are never touched.
    if (s == d || s < 0 || s >= num_slots || d < 0 || d >= num_slots) return false;
    from = s * row_vecs + c;
    to = d * row_vecs + c;
    return true;
  });
}

}  // namespace

cudaError_t launch_move_kv_slots(const MoveBuffers& buffers, int64_t planes, int64_t num_slots, int64_t row_bytes,
                                 IndexPtr src_slots, IndexPtr dst_slots, IndexPtr num_moves, int64_t N,
                                 cudaStream_t stream) {
  if (buffers.count == 0 || planes == 0 || row_bytes == 0 || N == 0) return cudaSuccess;
  uintptr_t address_bits = 0;  // the OR of all base addresses is aligned to their smallest alignment
  for (int k = 0; k < buffers.count; ++k) address_bits |= reinterpret_cast<uintptr_t>(buffers.ptr[k]);
  return with_widest_vector(row_bytes, address_bits, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t row_vecs = row_bytes / int64_t(sizeof(Vec));
    // Wide rows get wider slices rather than more than 65535 of them (grid.y's limit).
    int64_t slice_vecs = row_vecs < kSliceVecs ? row_vecs : kSliceVecs;
    if ((row_vecs + slice_vecs - 1) / slice_vecs > kMaxGridY) slice_vecs = (row_vecs + kMaxGridY - 1) / kMaxGridY;
    const dim3 grid(static_cast<unsigned int>(buffers.count * planes),
                    static_cast<unsigned int>((row_vecs + slice_vecs - 1) / slice_vecs));
    move_kv_slots_kernel<Vec><<<grid, kThreads, 0, stream>>>(buffers, planes, num_slots, row_vecs, slice_vecs,
                                                             src_slots, dst_slots, num_moves, N);
    return cudaGetLastError();
  });
}

}  // namespace specdec
