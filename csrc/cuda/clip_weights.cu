// CUDA clip_weights_: every dense tensor of the list clamped by one multi-tensor launch
// per dtype (see multi_tensor_apply.cuh for when the table overflows into more).
#include "common.h"
#include "op_checks.h"
#include "cuda/multi_tensor_apply.cuh"

#include <ATen/ops/clamp.h>

#include <cmath>

namespace pyfast_gan {
namespace {

// at::clamp's semantics: bounds rounded to T, NaN stays NaN. Comparisons and a select,
// never fminf/fmaxf: the build uses --use_fast_math, under which min/max flush
// denormal inputs to zero, while a select returns x's bits untouched.
template <typename T, typename acc_t>
__device__ __forceinline__ T clamp_one(T x, acc_t lo_a, acc_t hi_a, T lo, T hi) {
  const acc_t xa = static_cast<acc_t>(x);
  return xa < lo_a ? lo : (xa > hi_a ? hi : x);
}

template <typename T>
struct ClipFunctor {
  using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  T lo, hi;
  __device__ __forceinline__ void operator()(const mta::TensorListMetadata<1>& meta, int t, int64_t start,
                                             int64_t len) const {
    T* p = static_cast<T*>(meta.addresses[0][t]) + start;
    const acc_t lo_a = static_cast<acc_t>(lo), hi_a = static_cast<acc_t>(hi);
    constexpr int V = 16 / sizeof(T);
    int64_t done = 0;
    if (mta::is_aligned16(p)) {
      using Vec = mta::AlignedVector<T, V>;
      const int64_t nv = len / V;
      Vec* pv = reinterpret_cast<Vec*>(p);
      for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        Vec v = pv[i];
#pragma unroll
        for (int k = 0; k < V; ++k) v.val[k] = clamp_one(v.val[k], lo_a, hi_a, lo, hi);
        pv[i] = v;
      }
      done = nv * V;
    }
    for (int64_t i = done + threadIdx.x; i < len; i += blockDim.x) p[i] = clamp_one(p[i], lo_a, hi_a, lo, hi);
  }
};

void clip_weights_cuda(at::TensorList tensors, double clip_value) {
  check_clip_weights(tensors, clip_value);
  if (tensors.empty()) return;
  std::vector<at::Tensor> fallback;
  for (at::ScalarType st : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    std::vector<std::vector<at::Tensor>> lists(1);
    for (const at::Tensor& t : tensors) {
      if (t.scalar_type() != st) continue;
      // A dense tensor (contiguous, channels_last, any permutation) is one span of
      // memory; a strided view is not and takes ATen's clamp_ (one more launch).
      if (t.is_non_overlapping_and_dense())
        lists[0].push_back(t);
      else
        fallback.push_back(t);
    }
    if (lists[0].empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "clip_weights_cuda", [&] {
      ClipFunctor<scalar_t> f{static_cast<scalar_t>(-clip_value), static_cast<scalar_t>(clip_value)};
      mta::multi_tensor_apply<1>(lists, f);
    });
  }
  for (auto& t : fallback) const_cast<at::Tensor&>(t).clamp_(-clip_value, clip_value);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast_gan, CUDA, m) {
  m.impl("clip_weights_", &clip_weights_cuda);
}

}  // namespace pyfast_gan
