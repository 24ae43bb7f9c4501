// Op registration (schema once, here) and argument validation shared by the CPU and CUDA kernels.
#include <torch/extension.h>

#include "compact_kv.h"

namespace specdec {

namespace {

// Index values are validated on the host: on CUDA the three small index tensors travel in one copy.
void check_index_values(const at::Tensor& src_pos, const at::Tensor& dst_pos, const at::Tensor& counts,
                        int64_t S) {
  const int64_t B = src_pos.size(0), M = src_pos.size(1);
  at::Tensor all = at::cat({src_pos.reshape({-1}), dst_pos.reshape({-1}), counts.reshape({-1})}).to(at::kCPU);
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
  for (const auto& [t, name] : idx) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "compact_kv_cache: ", name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == cache.device(), "compact_kv_cache: ", name, " must be on the cache's device ",
                cache.device(), ", got ", t->device());
    TORCH_CHECK_VALUE(t->is_contiguous(), "compact_kv_cache: ", name, " must be contiguous");
  }
  if (check_values) check_index_values(src_pos, dst_pos, counts, cache.size(4));
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
  m.def("built_with_cuda() -> bool", &built_with_cuda);
}

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("compact_kv_cache", &specdec::compact_kv_cache_cpu); }

// The module only exists so that `import specdec_kernels._C` loads the library and runs the
// registrations above; the ops are reached through torch.ops.specdec.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
