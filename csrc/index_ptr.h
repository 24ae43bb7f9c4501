// Index tensors may be int32 or int64 (each independently): kernels read them through IndexPtr, which
// widens every entry to int64. No torch headers, so nvcc and the C++ compiler both include it.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define SPECDEC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SPECDEC_HOST_DEVICE inline
#endif

namespace specdec {

struct IndexPtr {
  const void* data;  // nullptr: "not given" (an optional index tensor)
  bool is_int64;     // else int32

  // A uniform branch (the same for every thread), so reading int32 or int64 costs the same.
  SPECDEC_HOST_DEVICE int64_t operator[](int64_t i) const {
    return is_int64 ? static_cast<const int64_t*>(data)[i] : int64_t(static_cast<const int32_t*>(data)[i]);
  }
};

}  // namespace specdec
