// KV moves by cache slot, CPU: parallel over (buffer, plane) pairs, which are disjoint memory; inside a
// plane the moves run one after another in index order, which is the op's definition.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "compact_kv.h"

namespace specdec {

void move_kv_slots_cpu(at::TensorList caches, const at::Tensor& src_slots, const at::Tensor& dst_slots,
                       const std::optional<at::Tensor>& num_moves, int64_t slot_dims, bool check) {
  const SlotGeometry g = check_move_args(caches, src_slots, dst_slots, num_moves, slot_dims, check);
  const int64_t N = src_slots.numel();
  // Clamped: an unchecked call (check=false) must not read past the end of src_slots / dst_slots.
  const int64_t n = num_moves ? std::min(std::max(index_ptr(num_moves)[0], int64_t(0)), N) : N;
  const IndexPtr src = index_ptr(src_slots), dst = index_ptr(dst_slots);
  std::vector<char*> bases;
  for (const at::Tensor& t : caches) bases.push_back(static_cast<char*>(t.data_ptr()));
  const int64_t plane_bytes = g.num_slots * g.row_bytes;
  // Grain: enough planes per task to amortise the scheduling when moves are few and rows short.
  at::parallel_for(0, static_cast<int64_t>(bases.size()) * g.planes, 16, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      char* rows = bases[unit / g.planes] + (unit % g.planes) * plane_bytes;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = src[i], d = dst[i];
        // Padding (-1), no-op moves and, in unchecked calls, out-of-range slots are never touched.
        if (s == d || s < 0 || s >= g.num_slots || d < 0 || d >= g.num_slots) continue;
        std::memcpy(rows + d * g.row_bytes, rows + s * g.row_bytes, g.row_bytes);
      }
    }
  });
}

}  // namespace specdec
