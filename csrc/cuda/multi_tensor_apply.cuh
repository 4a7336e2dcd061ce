// Multi-tensor apply: one kernel launch over chunks of many tensors.
//
// The design of NVIDIA apex's and PyTorch's MultiTensorApply: the host walks the tensor
// lists, cutting every tensor into kChunkSize-element chunks, and fills a metadata struct
// (tensor base addresses per list, sizes, and a block -> (tensor, chunk) map) that is
// passed BY VALUE as a kernel argument, so the launch needs no table upload and no sync.
// One thread block handles one chunk. Kernel arguments are capped at 4 KiB (the portable
// limit; CUDA >= 12.1 on Volta+ allows 32 KiB, not relied on), which bounds the table:
// when it fills (kMaxTensors[depth] tensors or kMaxBlocks chunks) the launcher issues the
// launch and starts a new table. A DCGAN-64 critic (~20 tensors, ~45 chunks of 64K)
// therefore takes one launch; a list of hundreds of tensors takes ceil(tensors / max).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

namespace pyfast_gan {
namespace mta {

constexpr int kBlockSize = 512;
constexpr int64_t kChunkSize = 65536;
// Per depth (number of tensor lists, 1..5): table sizes that keep the struct < 4 KiB.
constexpr int kMaxTensors[5] = {110, 64, 48, 36, 30};
constexpr int kMaxBlocks = 320;

template <int depth>
struct TensorListMetadata {
  void* addresses[depth][kMaxTensors[depth - 1]];
  int64_t numel[kMaxTensors[depth - 1]];
  unsigned char block_to_tensor[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};
static_assert(sizeof(TensorListMetadata<1>) <= 4000, "metadata exceeds the kernel argument limit");
static_assert(sizeof(TensorListMetadata<3>) <= 4000, "metadata exceeds the kernel argument limit");
static_assert(sizeof(TensorListMetadata<5>) <= 4000, "metadata exceeds the kernel argument limit");

// 16-byte vector for aligned loads/stores (LDG.128 / STG.128).
template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

template <typename T>
__device__ __forceinline__ bool is_aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <int depth, typename Functor>
__global__ void __launch_bounds__(kBlockSize) multi_tensor_kernel(const TensorListMetadata<depth> meta, Functor f) {
  const int t = meta.block_to_tensor[blockIdx.x];
  const int64_t start = static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]) * kChunkSize;
  const int64_t n = meta.numel[t];
  const int64_t len = (n - start) < kChunkSize ? (n - start) : kChunkSize;
  f(meta, t, start, len);
}

// Launch `f` over every chunk of the tensors in `lists` (lists[d][i] is the i-th tensor
// of list d; all lists have the same sizes per index, checked by the caller). Returns
// the number of kernel launches (1 unless the table overflowed).
template <int depth, typename Functor>
int multi_tensor_apply(const std::vector<std::vector<at::Tensor>>& lists, const Functor& f) {
  TORCH_CHECK(static_cast<int>(lists.size()) == depth, "multi_tensor_apply: expected ", depth, " tensor lists");
  const size_t ntensors = lists[0].size();
  if (ntensors == 0) return 0;
  const c10::cuda::CUDAGuard guard(lists[0][0].device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  constexpr int max_tensors = kMaxTensors[depth - 1];
  TensorListMetadata<depth> meta;
  int loc_tensor = 0, loc_block = 0, launches = 0;
  for (size_t i = 0; i < ntensors; ++i) {
    const int64_t n = lists[0][i].numel();
    if (n == 0) continue;
    for (int d = 0; d < depth; ++d) meta.addresses[d][loc_tensor] = lists[d][i].data_ptr();
    meta.numel[loc_tensor] = n;
    ++loc_tensor;
    const int64_t chunks = (n + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_to_tensor[loc_block] = static_cast<unsigned char>(loc_tensor - 1);
      meta.block_to_chunk[loc_block] = static_cast<int>(c);
      ++loc_block;
      const bool blocks_full = loc_block == kMaxBlocks;
      const bool tensors_full = loc_tensor == max_tensors && c == chunks - 1;
      const bool last = i == ntensors - 1 && c == chunks - 1;
      if (blocks_full || tensors_full || last) {
        multi_tensor_kernel<depth><<<loc_block, kBlockSize, 0, stream>>>(meta, f);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        ++launches;
        loc_block = 0;
        if (c == chunks - 1) {
          loc_tensor = 0;  // this tensor is done: start an empty table
        } else {
          // Carry the unfinished tensor over as entry 0 of the next table.
          for (int d = 0; d < depth; ++d) meta.addresses[d][0] = meta.addresses[d][loc_tensor - 1];
          meta.numel[0] = meta.numel[loc_tensor - 1];
          loc_tensor = 1;
        }
      }
    }
  }
  // Tensors with zero elements at the end leave a partly filled table behind.
  if (loc_block > 0) {
    multi_tensor_kernel<depth><<<loc_block, kBlockSize, 0, stream>>>(meta, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ++launches;
  }
  return launches;
}

}  // namespace mta
}  // namespace pyfast_gan
