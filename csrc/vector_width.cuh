// Shared by the CUDA copy kernels: pick the widest vector type a row copy can use.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace specdec {

// Calls launch(Vec{}) with the widest of uint4 / uint2 / uint32_t / uint16_t / uint8_t whose size divides
// row_bytes and the alignment of every base address (pass the bitwise OR of the addresses): 16-byte loads
// for the usual head dims.
template <typename Launch>
cudaError_t with_widest_vector(int64_t row_bytes, uintptr_t address_bits, Launch&& launch) {
  auto fits = [&](int64_t w) { return row_bytes % w == 0 && address_bits % static_cast<uintptr_t>(w) == 0; };
  if (fits(16)) return launch(uint4{});
  if (fits(8)) return launch(uint2{});
  if (fits(4)) return launch(uint32_t{});
  if (fits(2)) return launch(uint16_t{});
  return launch(uint8_t{});
}

}  // namespace specdec
