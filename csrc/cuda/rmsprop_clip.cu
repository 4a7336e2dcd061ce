// CUDA rmsprop_clip_: torch.optim.RMSprop's update + clamp(-c, c) in one multi-tensor
// launch (lists: param, grad, square_avg [, grad_avg] [, momentum_buffer]).
//
// Per element the math is torch's single-tensor RMSprop, op by op, rounding to the
// storage dtype wherever torch writes a tensor. The build passes --use_fast_math, so every
// float op is an explicit _rn intrinsic: IEEE division and square root as torch's kernels
// use, and FMAs only where torch's kernels contract (addcmul, add(alpha=), lerp).
#include "common.h"
#include "op_checks.h"
#include "cuda/fp_rn.cuh"
#include "cuda/multi_tensor_apply.cuh"

#include <cmath>
#include <type_traits>

namespace pyfast_gan {

namespace {

template <typename acc_t>
struct Hyper {
  acc_t alpha, one_minus_alpha, lerp_coeff, eps, neg_lr, wd, mom, lo, hi;
  bool lerp_small, use_wd, maximize;
};

template <typename T, bool CENTERED, bool MOMENTUM>
struct RmsFunctor {
  using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  static constexpr int depth = 3 + CENTERED + MOMENTUM;
  Hyper<acc_t> h;
  T lo_t, hi_t;
  const float* found_inf;  // nullptr, or a device flag: nonzero = leave everything as it is

  static __device__ __forceinline__ acc_t r(acc_t x) { return static_cast<acc_t>(static_cast<T>(x)); }

  __device__ __forceinline__ void elem(T& p, T g_in, T& sa, T& ga, T& mb) const {
    using F = Fp<acc_t>;
    acc_t g = static_cast<acc_t>(g_in);
    if (h.maximize) g = -g;
    acc_t pa = static_cast<acc_t>(p);
    if (h.use_wd) g = r(F::fma(h.wd, pa, g));
    acc_t s = r(F::mul(static_cast<acc_t>(sa), h.alpha));
    s = r(F::fma(F::mul(h.one_minus_alpha, g), g, s));
    sa = static_cast<T>(s);
    acc_t avg;
    if constexpr (CENTERED) {
      acc_t a = static_cast<acc_t>(ga);
      const acc_t d = F::sub(g, a);
      a = r(F::fma(h.lerp_coeff, d, h.lerp_small ? a : g));
      ga = static_cast<T>(a);
      avg = r(F::sqrt(r(F::fma(-a, a, s))));
    } else {
      avg = r(F::sqrt(s));
    }
    avg = r(F::add(avg, h.eps));
    if constexpr (MOMENTUM) {
      acc_t b = r(F::mul(static_cast<acc_t>(mb), h.mom));
      b = r(F::add(b, F::div(g, avg)));
      mb = static_cast<T>(b);
      pa = r(F::fma(h.neg_lr, b, pa));
    } else {
      pa = r(F::fma(h.neg_lr, F::div(g, avg), pa));
    }
    // Select, not fminf/fmaxf (fast-math min/max flush denormals); NaN stays NaN.
    p = pa < h.lo ? lo_t : (pa > h.hi ? hi_t : static_cast<T>(pa));
  }

  __device__ __forceinline__ void operator()(const mta::TensorListMetadata<depth>& meta, int t, int64_t start,
                                             int64_t len) const {
    if (found_inf != nullptr && *found_inf != 0.0f) return;
    T* p = static_cast<T*>(meta.addresses[0][t]) + start;
    const T* g = static_cast<const T*>(meta.addresses[1][t]) + start;
    T* sa = static_cast<T*>(meta.addresses[2][t]) + start;
    T* ga = CENTERED ? static_cast<T*>(meta.addresses[3][t]) + start : nullptr;
    T* mb = MOMENTUM ? static_cast<T*>(meta.addresses[3 + CENTERED][t]) + start : nullptr;
    constexpr int V = 16 / sizeof(T);
    using Vec = mta::AlignedVector<T, V>;
    bool aligned = mta::is_aligned16(p) && mta::is_aligned16(g) && mta::is_aligned16(sa);
    if constexpr (CENTERED) aligned = aligned && mta::is_aligned16(ga);
    if constexpr (MOMENTUM) aligned = aligned && mta::is_aligned16(mb);
    int64_t done = 0;
    if (aligned) {
      const int64_t nv = len / V;
      for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        Vec vp = reinterpret_cast<Vec*>(p)[i];
        const Vec vg = reinterpret_cast<const Vec*>(g)[i];
        Vec vs = reinterpret_cast<Vec*>(sa)[i];
        Vec va, vm;
        if constexpr (CENTERED) va = reinterpret_cast<Vec*>(ga)[i];
        if constexpr (MOMENTUM) vm = reinterpret_cast<Vec*>(mb)[i];
#pragma unroll
        for (int k = 0; k < V; ++k) elem(vp.val[k], vg.val[k], vs.val[k], va.val[k], vm.val[k]);
        reinterpret_cast<Vec*>(p)[i] = vp;
        reinterpret_cast<Vec*>(sa)[i] = vs;
        if constexpr (CENTERED) reinterpret_cast<Vec*>(ga)[i] = va;
        if constexpr (MOMENTUM) reinterpret_cast<Vec*>(mb)[i] = vm;
      }
      done = nv * V;
    }
    for (int64_t i = done + threadIdx.x; i < len; i += blockDim.x) {
      T dummy_a{}, dummy_m{};
      elem(p[i], g[i], sa[i], CENTERED ? ga[i] : dummy_a, MOMENTUM ? mb[i] : dummy_m);
    }
  }
};

template <typename T, bool CENTERED, bool MOMENTUM>
void launch(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList grad_avgs,
            at::TensorList momentum_buffers, const std::vector<size_t>& idx, const Hyper<float>& hf,
            const Hyper<double>& hd, double clip_value, const float* found_inf) {
  using F = RmsFunctor<T, CENTERED, MOMENTUM>;
  std::vector<std::vector<at::Tensor>> lists(F::depth);
  for (size_t i : idx) {
    lists[0].push_back(params[i]);
    lists[1].push_back(grads[i]);
    lists[2].push_back(square_avgs[i]);
    if (CENTERED) lists[3].push_back(grad_avgs[i]);
    if (MOMENTUM) lists[3 + CENTERED].push_back(momentum_buffers[i]);
  }
  F f;
  if constexpr (std::is_same_v<T, double>) {
    f.h = hd;
  } else {
    f.h = hf;
  }
  f.found_inf = found_inf;
  f.lo_t = static_cast<T>(-clip_value);
  f.hi_t = static_cast<T>(clip_value);
  f.h.lo = static_cast<typename F::acc_t>(f.lo_t);
  f.h.hi = static_cast<typename F::acc_t>(f.hi_t);
  mta::multi_tensor_apply<F::depth>(lists, f);
}

template <typename acc_t>
Hyper<acc_t> make_hyper(double lr, double alpha, double eps, double weight_decay, double momentum, bool maximize) {
  Hyper<acc_t> h{};
  const acc_t w = static_cast<acc_t>(1.0 - alpha);
  h.alpha = static_cast<acc_t>(alpha);
  h.one_minus_alpha = w;
  h.lerp_small = std::abs(w) < acc_t(0.5);
  h.lerp_coeff = h.lerp_small ? w : w - acc_t(1);
  h.eps = static_cast<acc_t>(eps);
  h.neg_lr = static_cast<acc_t>(-lr);
  h.wd = static_cast<acc_t>(weight_decay);
  h.mom = static_cast<acc_t>(momentum);
  h.use_wd = weight_decay != 0;
  h.maximize = maximize;
  return h;
}

void rmsprop_clip_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                       at::TensorList grad_avgs, at::TensorList momentum_buffers, double lr, double alpha, double eps,
                       double weight_decay, double momentum, bool centered, bool maximize, double clip_value,
                       const std::optional<at::Tensor>& found_inf) {
  rmsprop_clip_check(params, grads, square_avgs, grad_avgs, momentum_buffers, momentum, centered, clip_value);
  const float* skip = nullptr;
  if (found_inf.has_value() && !params.empty()) {
    check_found_inf(*found_inf, params[0].device());
    skip = found_inf->const_data_ptr<float>();
  }
  const auto hf = make_hyper<float>(lr, alpha, eps, weight_decay, momentum, maximize);
  const auto hd = make_hyper<double>(lr, alpha, eps, weight_decay, momentum, maximize);
  for (at::ScalarType st : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].scalar_type() == st) idx.push_back(i);
    if (idx.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "rmsprop_clip_cuda", [&] {
      if (centered) {
        if (momentum > 0)
          launch<scalar_t, true, true>(params, grads, square_avgs, grad_avgs, momentum_buffers, idx, hf, hd,
                                       clip_value, skip);
        else
          launch<scalar_t, true, false>(params, grads, square_avgs, grad_avgs, momentum_buffers, idx, hf, hd,
                                        clip_value, skip);
      } else {
        if (momentum > 0)
          launch<scalar_t, false, true>(params, grads, square_avgs, grad_avgs, momentum_buffers, idx, hf, hd,
                                        clip_value, skip);
        else
          launch<scalar_t, false, false>(params, grads, square_avgs, grad_avgs, momentum_buffers, idx, hf, hd,
                                         clip_value, skip);
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast_gan, CUDA, m) {
  m.impl("rmsprop_clip_", &rmsprop_clip_cuda);
}

}  // namespace pyfast_gan
