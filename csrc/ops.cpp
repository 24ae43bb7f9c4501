// Op registration (schema once, here) and argument validation shared by the CPU and CUDA kernels.
#include <torch/extension.h>

#include <unordered_map>
#include <utility>
#include <vector>

#include "compact_kv.h"

namespace specdec {

namespace {

// Index tensors: int32 or int64 (each on its own), on the buffers' device, contiguous.
void check_index_tensor(const at::Tensor& t, const char* op, const char* name, const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                   " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " must be on the cache's device ", device, ", got ",
                    t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// The index tensors' values as one int64 host array: on CUDA they travel in one copy (one sync).
at::Tensor index_values_on_host(const std::vector<at::Tensor>& parts) {
  std::vector<at::Tensor> flat;
  for (const auto& t : parts) flat.push_back(t.reshape({-1}).to(at::kLong));
  return at::cat(flat).to(at::kCPU).contiguous();
}

// Index values are validated on the host: on CUDA the three small index tensors travel in one copy.
void check_index_values(const at::Tensor& src_pos, const at::Tensor& dst_pos, const at::Tensor& counts,
                        int64_t S) {
  const int64_t B = src_pos.size(0), M = src_pos.size(1);
  at::Tensor all = index_values_on_host({src_pos, dst_pos, counts});
  const int64_t* src = all.data_ptr<int64_t>();
  const int64_t* dst = src + B * M;
  const int64_t* cnt = dst + B;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(cnt[b] >= 0 && cnt[b] <= M, "compact_kv_cache: counts[", b, "] = ", cnt[b],
                " must be in [0, M] with M = src_pos.size(1) = ", M);
    TORCH_CHECK_VALUE(dst[b] >= 0 && dst[b] <= S, "compact_kv_cache: dst_pos[", b, "] = ", dst[b],
                " must be in [0, S] with S = cache.size(4) = ", S);
    for (int64_t i = 0; i < cnt[b]; ++i) {
      const int64_t s = src[b * M + i];
      TORCH_CHECK_VALUE(s >= 0 && s < S, "compact_kv_cache: src_pos[", b, ", ", i, "] = ", s,
                  " is out of range [0, ", S, ")");
      TORCH_CHECK_VALUE(i == 0 || s > src[b * M + i - 1], "compact_kv_cache: src_pos[", b,
                  "] must be strictly ascending in its first counts[b] entries; src_pos[", b, ", ", i,
                  "] = ", s, " follows ", src[b * M + i - 1]);
      TORCH_CHECK_VALUE(s >= dst[b] + i, "compact_kv_cache: src_pos[", b, ", ", i, "] = ", s,
                  " is before its destination dst_pos[b] + i = ", dst[b] + i,
                  " (compaction only moves entries towards the front)");
    }
  }
}

// move_kv_slots' contract on the first num_moves moves: every slot -1 (skip) or in [0, num_slots);
// among the real moves (no -1, src != dst) destinations are distinct and no move reads a slot that an
// earlier move wrote. Then the parallel CUDA kernel equals applying the moves one after another.
void check_move_values(const at::Tensor& src_slots, const at::Tensor& dst_slots,
                       const std::optional<at::Tensor>& num_moves, int64_t num_slots) {
  const int64_t N = src_slots.numel();
  std::vector<at::Tensor> parts = {src_slots, dst_slots};
  if (num_moves) parts.push_back(*num_moves);
  at::Tensor all = index_values_on_host(parts);
  const int64_t* src = all.data_ptr<int64_t>();
  const int64_t* dst = src + N;
  const int64_t n = num_moves ? dst[N] : N;
  TORCH_CHECK_VALUE(n >= 0 && n <= N, "move_kv_slots: num_moves = ", n,
                    " must be in [0, N] with N = src_slots.numel() = ", N);
  std::unordered_map<int64_t, int64_t> writer;  // destination slot -> the move that writes it
  for (int64_t i = 0; i < n; ++i) {
    for (const auto& [name, v] : {std::pair<const char*, int64_t>{"src_slots", src[i]}, {"dst_slots", dst[i]}}) {
      TORCH_CHECK_VALUE(v == -1 || (v >= 0 && v < num_slots), "move_kv_slots: ", name, "[", i, "] = ", v,
                        " must be -1 (skip) or a slot in [0, num_slots = ", num_slots, ")");
    }
    if (src[i] == -1 || dst[i] == -1 || src[i] == dst[i]) continue;  // no-ops
    const auto earlier = writer.find(src[i]);
    TORCH_CHECK_VALUE(earlier == writer.end(), "move_kv_slots: src_slots[", i, "] = ", src[i],
                      " is dst_slots[", earlier->second, "], written by an earlier move; a move may not read a slot "
                      "an earlier move wrote (order the moves so that each source is read before it is overwritten)");
    const auto [same, fresh] = writer.emplace(dst[i], i);
    TORCH_CHECK_VALUE(fresh, "move_kv_slots: dst_slots[", i, "] = ", dst[i], " is also dst_slots[", same->second,
                      "]; the destinations of the moves must be distinct");
  }
}

}  // namespace

void check_compact_args(const at::Tensor& cache, const at::Tensor& src_pos, const at::Tensor& dst_pos,
                        const at::Tensor& counts, bool check_values) {
  TORCH_CHECK_VALUE(cache.dim() == 6 && cache.size(1) == 2,
              "compact_kv_cache: cache must have shape [L, 2, B, H, S, D], got ", cache.sizes());
  TORCH_CHECK_VALUE(cache.is_contiguous(), "compact_kv_cache: cache must be contiguous");
  const int64_t B = cache.size(2);
  TORCH_CHECK_VALUE(src_pos.dim() == 2 && src_pos.size(0) == B, "compact_kv_cache: src_pos must have shape [B, M] with B = ",
              B, ", got ", src_pos.sizes());
  TORCH_CHECK_VALUE(dst_pos.dim() == 1 && dst_pos.size(0) == B, "compact_kv_cache: dst_pos must have shape [B] with B = ",
              B, ", got ", dst_pos.sizes());
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == B, "compact_kv_cache: counts must have shape [B] with B = ", B,
              ", got ", counts.sizes());
  const std::pair<const at::Tensor*, const char*> idx[] = {{&src_pos, "src_pos"}, {&dst_pos, "dst_pos"}, {&counts, "counts"}};
  for (const auto& [t, name] : idx) check_index_tensor(*t, "compact_kv_cache", name, cache.device());
  if (check_values) check_index_values(src_pos, dst_pos, counts, cache.size(4));
}

SlotGeometry check_move_args(at::TensorList caches, const at::Tensor& src_slots, const at::Tensor& dst_slots,
                             const std::optional<at::Tensor>& num_moves, int64_t slot_dims, bool check_values) {
  TORCH_CHECK_VALUE(!caches.empty(), "move_kv_slots: caches must hold at least one tensor");
  TORCH_CHECK_VALUE(slot_dims == 1 || slot_dims == 2,
                    "move_kv_slots: slot_dims must be 1 (buffers [..., num_slots, Hkv, D]) or 2 (buffers [..., "
                    "num_blocks, page_size, Hkv, D]), got ", slot_dims);
  const at::Tensor& first = caches[0];
  TORCH_CHECK_VALUE(first.dim() >= slot_dims + 2, "move_kv_slots: with slot_dims = ", slot_dims,
                    " every buffer in caches needs at least ", slot_dims + 2, " dims, got shape ", first.sizes());
  for (size_t k = 0; k < caches.size(); ++k) {
    const at::Tensor& t = caches[k];
    TORCH_CHECK_VALUE(t.sizes() == first.sizes(), "move_kv_slots: caches[", k, "] has shape ", t.sizes(),
                      " but caches[0] has shape ", first.sizes(), "; all buffers must have one shape");
    TORCH_CHECK_TYPE(t.scalar_type() == first.scalar_type(), "move_kv_slots: caches[", k, "] has dtype ",
                     t.scalar_type(), " but caches[0] has dtype ", first.scalar_type());
    TORCH_CHECK_VALUE(t.device() == first.device(), "move_kv_slots: caches[", k, "] is on ", t.device(),
                      " but caches[0] is on ", first.device());
    TORCH_CHECK_VALUE(t.is_contiguous(), "move_kv_slots: caches[", k, "] must be contiguous");
  }
  TORCH_CHECK_VALUE(src_slots.dim() == 1, "move_kv_slots: src_slots must have shape [N], got ", src_slots.sizes());
  TORCH_CHECK_VALUE(dst_slots.sizes() == src_slots.sizes(),
                    "move_kv_slots: dst_slots must have the shape of src_slots ", src_slots.sizes(), ", got ",
                    dst_slots.sizes());
  check_index_tensor(src_slots, "move_kv_slots", "src_slots", first.device());
  check_index_tensor(dst_slots, "move_kv_slots", "dst_slots", first.device());
  if (num_moves) {
    TORCH_CHECK_VALUE(num_moves->numel() == 1,
                      "move_kv_slots: num_moves must hold one value (shape [] or [1]), got shape ", num_moves->sizes());
    check_index_tensor(*num_moves, "move_kv_slots", "num_moves", first.device());
  }
  const int64_t lead = first.dim() - slot_dims - 2;
  SlotGeometry g{1, 1, first.size(-2) * first.size(-1) * static_cast<int64_t>(first.element_size())};
  for (int64_t k = 0; k < lead; ++k) g.planes *= first.size(k);
  for (int64_t k = lead; k < lead + slot_dims; ++k) g.num_slots *= first.size(k);
  if (check_values) check_move_values(src_slots, dst_slots, num_moves, g.num_slots);
  return g;
}

}  // namespace specdec

namespace {
bool built_with_cuda() {
#ifdef SPECDEC_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY(specdec, m) {
  m.def(
      "compact_kv_cache(Tensor(a!) cache, Tensor src_pos, Tensor dst_pos, Tensor counts, bool check=True) -> ()");
  m.def(
      "move_kv_slots(Tensor(a!)[] caches, Tensor src_slots, Tensor dst_slots, Tensor? num_moves, int slot_dims, "
      "bool check=True) -> ()");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
}

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("compact_kv_cache", &specdec::compact_kv_cache_cpu);
  m.impl("move_kv_slots", &specdec::move_kv_slots_cpu);
}

// The module only exists so that `import specdec_kernels._C` loads the library and runs the
// registrations above; the ops are reached through torch.ops.specdec.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
