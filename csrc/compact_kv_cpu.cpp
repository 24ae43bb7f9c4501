// KV-cache compaction, CPU: parallel over (layer, key/value, batch, head) planes, rows copied in
// ascending order inside a plane, so overlapping sources and destinations are safe (each source
// row lies at or after its destination, and after every destination written before it).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "compact_kv.h"

namespace specdec {

void compact_kv_cache_cpu(at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                          const at::Tensor& counts, bool check) {
  check_compact_args(cache, src_pos, dst_pos, counts, check);
  const int64_t B = cache.size(2), H = cache.size(3), S = cache.size(4);
  const int64_t M = src_pos.size(1);
  const int64_t row_bytes = cache.size(5) * cache.element_size();
  const int64_t planes = cache.size(0) * 2 * B * H;
  char* base = static_cast<char*>(cache.data_ptr());
  // int32 or int64, each on its own: read through IndexPtr, widened to int64
  const IndexPtr src = index_ptr(src_pos), dst = index_ptr(dst_pos), cnt = index_ptr(counts);
  // Grain: enough planes per task to amortise the scheduling when rows are few and short.
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = (plane / H) % B;
      char* rows = base + plane * S * row_bytes;
      // Clamped to src_pos's width: an unchecked call (check=false) with counts[b] > M must not read
      // past the end of src_pos (negative counts copy nothing).
      const int64_t n = std::min(std::max(cnt[b], int64_t(0)), M), d = dst[b];
      // No destination d + i (0 <= i < M) lies in [0, S): nothing to copy, and d + i cannot overflow below.
      if (d <= -M || d >= S) continue;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = src[b * M + i];
        // Unchecked calls (check=false) still never touch memory outside the plane.
        if (s == d + i || s < 0 || s >= S || d + i < 0 || d + i >= S) continue;
        std::memcpy(rows + (d + i) * row_bytes, rows + s * row_bytes, row_bytes);
      }
    }
  });
}

}  // namespace specdec
