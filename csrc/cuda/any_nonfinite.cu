// CUDA any_nonfinite (see csrc/cpu/any_nonfinite.cpp for the schema and the CPU kernel):
// one multi-tensor launch per dtype testing exponent bits; any block that sees inf/NaN
// stores true into a device flag (a benign race: every writer stores true), so the caller
// reads one flag, or keeps it on the device.
#include "common.h"
#include "op_checks.h"
#include "cuda/multi_tensor_apply.cuh"

#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <type_traits>
#include <vector>

namespace pyfast_gan {
namespace {

template <typename T>
struct NonfiniteFunctor {
  bool* flag;
  __device__ __forceinline__ void operator()(const mta::TensorListMetadata<1>& meta, int t, int64_t start,
                                             int64_t len) const {
    using U = std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
    constexpr U mask = sizeof(T) == 8   ? U(0x7ff0000000000000ull)
                       : sizeof(T) == 4 ? U(0x7f800000u)
                       : std::is_same_v<T, at::BFloat16> ? U(0x7f80)
                                                          : U(0x7c00);
    const U* u = static_cast<const U*>(meta.addresses[0][t]) + start;
    bool hit = false;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) hit |= (u[i] & mask) == mask;
    if (hit) *flag = true;
  }
};

at::Tensor any_nonfinite_cuda(at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), "tensors: needs at least one tensor");
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  at::Tensor flag = at::zeros({}, tensors[0].options().dtype(at::kBool));
  for (at::ScalarType st : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    std::vector<std::vector<at::Tensor>> lists(1);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const at::Tensor& t = tensors[i];
      check_nonfinite_tensor(t, i, tensors[0]);
      if (t.scalar_type() != st) continue;
      if (t.is_non_overlapping_and_dense())
        lists[0].push_back(t);
      else
        flag.logical_or_(at::isfinite(t).all().logical_not());
    }
    if (lists[0].empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "any_nonfinite_cuda", [&] {
      mta::multi_tensor_apply<1>(lists, NonfiniteFunctor<scalar_t>{flag.data_ptr<bool>()});
    });
  }
  return flag;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast_gan, CUDA, m) {
  m.impl("any_nonfinite", &any_nonfinite_cuda);
}

}  // namespace pyfast_gan
