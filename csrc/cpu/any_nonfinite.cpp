// any_nonfinite: does any tensor of a list hold inf or NaN? One 0-d bool tensor on the
// tensors' device (CPU for an empty list), so RMSpropClip's skip_nonfinite check costs one
// pass over the gradients and one flag read; CUDA kernel in csrc/cuda/any_nonfinite.cu.
#include "common.h"
#include "op_checks.h"

#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/scalar_tensor.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace pyfast_gan {
namespace {

// Work unit: 64K elements per span; below kSerialBelow elements in all, one thread.
constexpr int64_t kSpan = 65536;
constexpr int64_t kSerialBelow = 131072;

// any_nonfinite: one pass over every tensor, testing exponent bits (all ones = inf or
// NaN) with an OR-reduction the compiler vectorizes; chunks stop early once a hit is
// known. Replaces torch._foreach_norm + stack + isfinite, which cost 3x the fused step
// itself on the DCGAN-64 critic on 2 CPU cores.
template <typename U>
bool span_nonfinite(const U* u, int64_t n, U mask) {
  U hit = 0;
  for (int64_t i = 0; i < n; ++i) hit |= static_cast<U>((u[i] & mask) == mask);
  return hit != 0;
}

bool chunk_nonfinite(const void* data, at::ScalarType st, int64_t b, int64_t e) {
  switch (st) {
    case at::kFloat:
      return span_nonfinite<uint32_t>(static_cast<const uint32_t*>(data) + b, e - b, 0x7f800000u);
    case at::kDouble:
      return span_nonfinite<uint64_t>(static_cast<const uint64_t*>(data) + b, e - b, 0x7ff0000000000000ull);
    case at::kHalf:
      return span_nonfinite<uint16_t>(static_cast<const uint16_t*>(data) + b, e - b, 0x7c00);
    case at::kBFloat16:
      return span_nonfinite<uint16_t>(static_cast<const uint16_t*>(data) + b, e - b, 0x7f80);
    default:
      TORCH_CHECK(false, "unreachable");
  }
}

at::Tensor any_nonfinite_cpu(at::TensorList tensors) {
  struct Span {
    const void* data;
    at::ScalarType st;
    int64_t b, e;
  };
  std::vector<Span> spans;
  bool found = false;
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const auto st = t.scalar_type();
    check_nonfinite_tensor(t, i, tensors[0]);
    if (!t.is_non_overlapping_and_dense()) {
      found = found || !at::isfinite(t).all().item<bool>();
      continue;
    }
    const int64_t n = t.numel();
    for (int64_t b = 0; b < n; b += kSpan) spans.push_back({t.const_data_ptr(), st, b, std::min(n, b + kSpan)});
    total += n;
  }
  std::atomic<bool> hit{found};
  const int64_t ns = static_cast<int64_t>(spans.size());
  if (!found && ns > 0) {
    at::parallel_for(0, ns, total < kSerialBelow ? ns : 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1 && !hit.load(std::memory_order_relaxed); ++c) {
        if (chunk_nonfinite(spans[c].data, spans[c].st, spans[c].b, spans[c].e)) hit.store(true);
      }
    });
  }
  return at::scalar_tensor(hit.load(), at::TensorOptions().dtype(at::kBool));
}

}  // namespace
}  // namespace pyfast_gan

TORCH_LIBRARY_FRAGMENT(pyfast_gan, m) {
  // 0-d bool tensor on the tensors' device (CPU for an empty list): any inf or NaN.
  m.def("any_nonfinite(Tensor[] tensors) -> Tensor");
}

TORCH_LIBRARY_IMPL(pyfast_gan, CPU, m) {
  m.impl("any_nonfinite", &pyfast_gan::any_nonfinite_cpu);
}
