// rmsprop_clip_: torch.optim.RMSprop's update followed by clamp(-c, c), fused into one
// pass over memory per element (read param, grad and state once, write param and state
// once) instead of RMSprop's five ATen passes plus a clamp_ pass per parameter.
//
// Numerics follow torch's single-tensor RMSprop op by op, with every intermediate
// rounded to the parameter dtype where torch stores it (so fp16/bf16 state is fp16/bf16,
// as in torch). torch's AVX2/AVX512 CPU kernels evaluate addcmul, add(alpha=), lerp and
// add with fused multiply-adds; the AVX2 path below uses the same FMAs (checked
// bitwise against torch 2.14 on an AVX512 host), the baseline path plain mul+add as
// torch's DEFAULT capability does.
#include "common.h"
#include "op_checks.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PFG_X86 1
#endif

// Contraction of a*b+c into an FMA would change rounding where torch rounds in between
// (e.g. buf*momentum is stored before addcdiv); FMAs are written out explicitly.
#pragma GCC optimize("fp-contract=off")

namespace pyfast_gan {
namespace {

constexpr int64_t kChunk = 16384;
constexpr int64_t kSerialBelow = 32768;

struct RmsArgs {
  double lr, alpha, eps, weight_decay, momentum, clip_value;
  bool centered, maximize;
};

template <typename acc_t>
inline acc_t fma_or(acc_t a, acc_t b, acc_t c, bool use_fma) {
  return use_fma ? std::fma(a, b, c) : a * b + c;
}

// Scalar path for every dtype (fp16/bf16/fp64 and the fp32 tail/baseline): opmath is
// float (double for fp64); r() rounds to the storage dtype where torch writes a tensor.
template <typename T>
void rms_span_generic(T* p, const T* g, T* sa, T* ga, T* mb, int64_t n, const RmsArgs& a, bool use_fma) {
  using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  auto r = [](acc_t x) { return static_cast<acc_t>(static_cast<T>(x)); };
  const acc_t alpha = static_cast<acc_t>(a.alpha);
  const acc_t one_minus_alpha = static_cast<acc_t>(1.0 - a.alpha);
  const acc_t eps = static_cast<acc_t>(a.eps);
  const acc_t neg_lr = static_cast<acc_t>(-a.lr);
  const acc_t wd = static_cast<acc_t>(a.weight_decay);
  const acc_t mom = static_cast<acc_t>(a.momentum);
  const bool use_wd = a.weight_decay != 0, use_mom = a.momentum > 0;
  const acc_t w = one_minus_alpha;
  const bool w_small = std::abs(w) < acc_t(0.5);
  const T lo_t = static_cast<T>(-a.clip_value), hi_t = static_cast<T>(a.clip_value);
  const acc_t lo = static_cast<acc_t>(lo_t), hi = static_cast<acc_t>(hi_t);
  for (int64_t i = 0; i < n; ++i) {
    acc_t gi = static_cast<acc_t>(g[i]);
    if (a.maximize) gi = -gi;
    acc_t pi = static_cast<acc_t>(p[i]);
    if (use_wd) gi = r(fma_or(wd, pi, gi, use_fma));
    acc_t s = r(static_cast<acc_t>(sa[i]) * alpha);
    s = r(fma_or(one_minus_alpha * gi, gi, s, use_fma));
    sa[i] = static_cast<T>(s);
    acc_t avg;
    if (a.centered) {
      acc_t ag = static_cast<acc_t>(ga[i]);
      const acc_t d = gi - ag;
      ag = r(w_small ? fma_or(w, d, ag, use_fma) : fma_or(w - acc_t(1), d, gi, use_fma));
      ga[i] = static_cast<T>(ag);
      avg = r(std::sqrt(r(fma_or(-ag, ag, s, use_fma))));
    } else {
      avg = r(std::sqrt(s));
    }
    avg = r(avg + eps);
    if (use_mom) {
      acc_t b = r(static_cast<acc_t>(mb[i]) * mom);
      b = r(b + gi / avg);
      mb[i] = static_cast<T>(b);
      pi = r(fma_or(neg_lr, b, pi, use_fma));
    } else {
      pi = r(pi + (neg_lr * gi) / avg);
    }
    pi = pi < lo ? lo : pi;
    pi = pi > hi ? hi : pi;
    p[i] = static_cast<T>(pi);
  }
}

#ifdef PFG_X86
__attribute__((target("avx2,fma"))) void rms_span_f32_avx2(float* p, const float* g, float* sa, float* ga,
                                                          float* mb, int64_t n, const RmsArgs& a) {
  const __m256 alpha = _mm256_set1_ps(static_cast<float>(a.alpha));
  const __m256 oma = _mm256_set1_ps(static_cast<float>(1.0 - a.alpha));
  const float wf = static_cast<float>(1.0 - a.alpha);
  const bool w_small = std::abs(wf) < 0.5f;
  const __m256 lerp_coeff = _mm256_set1_ps(w_small ? wf : wf - 1.0f);
  const __m256 eps = _mm256_set1_ps(static_cast<float>(a.eps));
  const __m256 neg_lr = _mm256_set1_ps(static_cast<float>(-a.lr));
  const __m256 wd = _mm256_set1_ps(static_cast<float>(a.weight_decay));
  const __m256 mom = _mm256_set1_ps(static_cast<float>(a.momentum));
  const __m256 lo = _mm256_set1_ps(static_cast<float>(-a.clip_value));
  const __m256 hi = _mm256_set1_ps(static_cast<float>(a.clip_value));
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const bool use_wd = a.weight_decay != 0, use_mom = a.momentum > 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 G = _mm256_loadu_ps(g + i);
    __m256 P = _mm256_loadu_ps(p + i);
    if (a.maximize) G = _mm256_xor_ps(G, sign);
    if (use_wd) G = _mm256_fmadd_ps(wd, P, G);
    __m256 S = _mm256_mul_ps(_mm256_loadu_ps(sa + i), alpha);
    S = _mm256_fmadd_ps(_mm256_mul_ps(oma, G), G, S);
    _mm256_storeu_ps(sa + i, S);
    __m256 avg;
    if (a.centered) {
      __m256 A = _mm256_loadu_ps(ga + i);
      const __m256 d = _mm256_sub_ps(G, A);
      A = _mm256_fmadd_ps(lerp_coeff, d, w_small ? A : G);
      _mm256_storeu_ps(ga + i, A);
      avg = _mm256_sqrt_ps(_mm256_fnmadd_ps(A, A, S));
    } else {
      avg = _mm256_sqrt_ps(S);
    }
    avg = _mm256_add_ps(avg, eps);
    if (use_mom) {
      __m256 B = _mm256_mul_ps(_mm256_loadu_ps(mb + i), mom);
      B = _mm256_add_ps(B, _mm256_div_ps(G, avg));
      _mm256_storeu_ps(mb + i, B);
      P = _mm256_fmadd_ps(neg_lr, B, P);
    } else {
      P = _mm256_add_ps(P, _mm256_div_ps(_mm256_mul_ps(neg_lr, G), avg));
    }
    // max_ps(lo, x) is `lo > x ? lo : x` and returns x when either is NaN: clamp_'s
    // NaN-in, NaN-out, bit for bit.
    P = _mm256_max_ps(lo, P);
    P = _mm256_min_ps(hi, P);
    _mm256_storeu_ps(p + i, P);
  }
  if (i < n) {
    rms_span_generic<float>(p + i, g + i, sa + i, a.centered ? ga + i : nullptr, use_mom ? mb + i : nullptr, n - i,
                            a, /*use_fma=*/true);
  }
}

bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// The dispatch lambda is not a template, so `if constexpr` there would not discard the
// fp32-only branch; this function template does.
template <typename T>
void rms_span(T* p, const T* g, T* sa, T* ga, T* mb, int64_t n, const RmsArgs& a, bool fast) {
#ifdef PFG_X86
  if constexpr (std::is_same_v<T, float>) {
    if (fast) {
      rms_span_f32_avx2(p, g, sa, ga, mb, n, a);
      return;
    }
  }
#endif
  rms_span_generic<T>(p, g, sa, ga, mb, n, a, fast);
}

struct Item {
  void* p;
  const void* g;
  void* sa;
  void* ga;
  void* mb;
  int64_t begin, end;
};

void rmsprop_clip_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                      at::TensorList grad_avgs, at::TensorList momentum_buffers, double lr, double alpha, double eps,
                      double weight_decay, double momentum, bool centered, bool maximize, double clip_value,
                      const std::optional<at::Tensor>& found_inf) {
  rmsprop_clip_check(params, grads, square_avgs, grad_avgs, momentum_buffers, momentum, centered, clip_value);
  if (found_inf.has_value()) {
    check_found_inf(*found_inf, params.empty() ? at::Device(at::kCPU) : params[0].device());
    // The flag lives in host memory here: reading it is a load, not a device sync.
    if (found_inf->item<float>() != 0.0f) return;
  }
  const RmsArgs args{lr, alpha, eps, weight_decay, momentum, clip_value, centered, maximize};
#ifdef PFG_X86
  const bool fast = cpu_has_avx2_fma();
#else
  const bool fast = false;
#endif
  for (at::ScalarType st : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    std::vector<Item> items;
    int64_t total = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() != st) continue;
      const int64_t n = params[i].numel();
      void* ga = centered ? grad_avgs[i].data_ptr() : nullptr;
      void* mb = momentum > 0 ? momentum_buffers[i].data_ptr() : nullptr;
      for (int64_t b = 0; b < n; b += kChunk)
        items.push_back({params[i].data_ptr(), grads[i].data_ptr(), square_avgs[i].data_ptr(), ga, mb, b,
                         std::min(n, b + kChunk)});
      total += n;
    }
    if (items.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "rmsprop_clip_cpu", [&] {
      const int64_t nitems = static_cast<int64_t>(items.size());
      at::parallel_for(0, nitems, total < kSerialBelow ? nitems : 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const Item& it = items[c];
          const int64_t b = it.begin, len = it.end - it.begin;
          auto* p = static_cast<scalar_t*>(it.p) + b;
          auto* g = static_cast<const scalar_t*>(it.g) + b;
          auto* sa = static_cast<scalar_t*>(it.sa) + b;
          auto* ga = it.ga ? static_cast<scalar_t*>(it.ga) + b : nullptr;
          auto* mb = it.mb ? static_cast<scalar_t*>(it.mb) + b : nullptr;
          rms_span<scalar_t>(p, g, sa, ga, mb, len, args, fast);
        }
      });
    });
  }
}

// Bump the version counters of everything mutated, as ATen's in-place ops do (see
// clip_weights.cpp).
void rmsprop_clip_inplace_or_view(c10::DispatchKeySet ks, at::TensorList params, at::TensorList grads,
                                  at::TensorList square_avgs, at::TensorList grad_avgs,
                                  at::TensorList momentum_buffers, double lr, double alpha, double eps,
                                  double weight_decay, double momentum, bool centered, bool maximize,
                                  double clip_value, const std::optional<at::Tensor>& found_inf) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyfast_gan::rmsprop_clip_", "")
                       .typed<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                   double, double, double, double, double, bool, bool, double,
                                   const std::optional<at::Tensor>&)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatch(ks & c10::after_ADInplaceOrView_keyset, params, grads, square_avgs, grad_avgs, momentum_buffers,
                  lr, alpha, eps, weight_decay, momentum, centered, maximize, clip_value, found_inf);
  }
  for (at::TensorList list : {params, square_avgs, grad_avgs, momentum_buffers})
    for (const at::Tensor& t : list) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyfast_gan, m) {
  m.def(
      "rmsprop_clip_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, Tensor(c!)[] grad_avgs, "
      "Tensor(d!)[] momentum_buffers, float lr, float alpha, float eps, float weight_decay, float momentum, "
      "bool centered, bool maximize, float clip_value, Tensor? found_inf=None) -> ()");
}

TORCH_LIBRARY_IMPL(pyfast_gan, CPU, m) {
  m.impl("rmsprop_clip_", &rmsprop_clip_cpu);
}

TORCH_LIBRARY_IMPL(pyfast_gan, ADInplaceOrView, m) {
  m.impl("rmsprop_clip_", &rmsprop_clip_inplace_or_view);
}

}  // namespace pyfast_gan
