// Per-sample layout helpers shared by the CPU (.cpp) and CUDA (.cu) kernels of the
// penalty family. Host code only; inline so every translation unit may include it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace pyfast_gan {

// True when every sample occupies one dense block of memory with the batch dim
// outermost, so the tensor can be walked as flat [N, M] memory from data_ptr().
inline bool per_sample_dense(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  if (!t.is_non_overlapping_and_dense()) return false;
  const int64_t n = t.size(0);
  return n <= 1 || t.stride(0) == t.numel() / n;
}

// V elements of T moved as one aligned load/store.
template <typename T, int V>
struct alignas(sizeof(T) * V) VecT {
  T v[V];
};

}  // namespace pyfast_gan
