// clip_weights_: clamp every tensor of a list to [-c, c] in place, in one op call.
//
// Schemas of the "clip" family live here (clip_weights_, clip_built_with_cuda), in
// rmsprop_clip.cpp (rmsprop_clip_) and in any_nonfinite.cpp (any_nonfinite). The CPU
// kernel splits all tensors into chunks and runs one at::parallel_for over the chunks of
// every tensor, so a critic of many small parameters costs one dispatch instead of one
// clamp_ per parameter.
#include "common.h"
#include "op_checks.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/clamp.h>

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>

namespace pyfast_gan {
namespace {

// 32K elements (128 KiB of fp32) per chunk: large enough that chunk bookkeeping is
// noise, small enough that a DCGAN-64 critic (2.8M weights) gives both cores work.
constexpr int64_t kChunk = 32768;
// Below this many elements threading costs more than it saves (measured on 2 cores).
constexpr int64_t kSerialBelow = 65536;

struct Span {
  void* data;
  int64_t begin;
  int64_t end;
};

// Clamp semantics of at::clamp: the bounds are rounded to the tensor's dtype
// (Scalar::to<scalar_t>) and NaN stays NaN. `x < lo ? lo : x` keeps NaN (the
// comparison is false) and returns either x or the bound, so the result is exact.
template <typename T>
inline void clamp_span(T* __restrict p, int64_t n, T lo_t, T hi_t) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    const T lo = lo_t, hi = hi_t;
    for (int64_t i = 0; i < n; ++i) {
      T x = p[i];
      x = x < lo ? lo : x;
      x = x > hi ? hi : x;
      p[i] = x;
    }
  } else {
    const float lo = static_cast<float>(lo_t), hi = static_cast<float>(hi_t);
    for (int64_t i = 0; i < n; ++i) {
      const float x = static_cast<float>(p[i]);
      if (x < lo) {
        p[i] = lo_t;
      } else if (x > hi) {
        p[i] = hi_t;
      }
    }
  }
}

#if defined(__x86_64__) || defined(_M_X64)
// The extension is built for baseline x86-64 (SSE2); torch's own clamp_ runs AVX2/AVX512
// kernels, and on a cache-resident critic (the DCGAN-64 one is 11 MB) the vector width
// decides the race. max_ps(lo, x) is `lo > x ? lo : x` and returns x when either is
// NaN, min_ps likewise: the same values as the scalar loop, NaN kept.
// GCC 12 flags _mm512_maskz_loadu_ps's internal undefined vector (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void clamp_f32_avx512(float* p, int64_t n, float lo_s, float hi_s) {
  const __m512 lo = _mm512_set1_ps(lo_s), hi = _mm512_set1_ps(hi_s);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 a = _mm512_loadu_ps(p + i), b = _mm512_loadu_ps(p + i + 16);
    _mm512_storeu_ps(p + i, _mm512_min_ps(hi, _mm512_max_ps(lo, a)));
    _mm512_storeu_ps(p + i + 16, _mm512_min_ps(hi, _mm512_max_ps(lo, b)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, n - i)) - 1);
    __m512 a = _mm512_maskz_loadu_ps(m, p + i);
    _mm512_mask_storeu_ps(p + i, m, _mm512_min_ps(hi, _mm512_max_ps(lo, a)));
    i += 16;
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 a = _mm512_maskz_loadu_ps(m, p + i);
    _mm512_mask_storeu_ps(p + i, m, _mm512_min_ps(hi, _mm512_max_ps(lo, a)));
  }
}
#pragma GCC diagnostic pop

__attribute__((target("avx2"))) void clamp_f32_avx2(float* p, int64_t n, float lo_s, float hi_s) {
  const __m256 lo = _mm256_set1_ps(lo_s), hi = _mm256_set1_ps(hi_s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a = _mm256_loadu_ps(p + i), b = _mm256_loadu_ps(p + i + 8);
    _mm256_storeu_ps(p + i, _mm256_min_ps(hi, _mm256_max_ps(lo, a)));
    _mm256_storeu_ps(p + i + 8, _mm256_min_ps(hi, _mm256_max_ps(lo, b)));
  }
  clamp_span<float>(p + i, n - i, lo_s, hi_s);
}

int cpu_level() {
  static const int level = __builtin_cpu_supports("avx512f") ? 2 : (__builtin_cpu_supports("avx2") ? 1 : 0);
  return level;
}
#endif

template <typename T>
void clamp_chunk(T* p, int64_t n, T lo, T hi) {
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (std::is_same_v<T, float>) {
    const int level = cpu_level();
    if (level == 2) return clamp_f32_avx512(p, n, lo, hi);
    if (level == 1) return clamp_f32_avx2(p, n, lo, hi);
  }
#endif
  clamp_span<T>(p, n, lo, hi);
}

bool kernel_ok(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense();
}

void clip_weights_cpu(at::TensorList tensors, double clip_value) {
  check_clip_weights(tensors, clip_value);
  if (tensors.empty()) return;
  // Group by dtype; a tensor that is not dense (a strided view) cannot be walked as one
  // span of memory, so it takes ATen's clamp_ (still exact, one extra dispatch).
  std::vector<at::Tensor> fallback;
  for (at::ScalarType st : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    std::vector<Span> chunks;
    int64_t total = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const at::Tensor& t = tensors[i];
      if (t.scalar_type() != st) continue;
      if (!kernel_ok(t)) {
        fallback.push_back(t);
        continue;
      }
      const int64_t n = t.numel();
      for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({t.data_ptr(), b, std::min(n, b + kChunk)});
      total += n;
    }
    if (chunks.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "clip_weights_cpu", [&] {
      const scalar_t lo = static_cast<scalar_t>(-clip_value);
      const scalar_t hi = static_cast<scalar_t>(clip_value);
      const int64_t nchunks = static_cast<int64_t>(chunks.size());
      const int64_t grain = total < kSerialBelow ? nchunks : 1;
      at::parallel_for(0, nchunks, grain, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const Span& s = chunks[c];
          clamp_chunk<scalar_t>(static_cast<scalar_t*>(s.data) + s.begin, s.end - s.begin, lo, hi);
        }
      });
    });
  }
  for (auto& t : fallback) const_cast<at::Tensor&>(t).clamp_(-clip_value, clip_value);
}

bool clip_built_with_cuda() { return PFG_BUILT_WITH_CUDA; }

// ATen's in-place ops bump the version counter of what they mutate, so autograd can
// refuse a backward through a tensor modified after it was saved; a custom op only gets
// that from an ADInplaceOrView kernel. This one redispatches, then bumps.
void clip_weights_inplace_or_view(c10::DispatchKeySet ks, at::TensorList tensors, double clip_value) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyfast_gan::clip_weights_", "")
                       .typed<void(at::TensorList, double)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatch(ks & c10::after_ADInplaceOrView_keyset, tensors, clip_value);
  }
  for (const at::Tensor& t : tensors) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyfast_gan, m) {
  m.def("clip_built_with_cuda() -> bool", &clip_built_with_cuda);
  m.def("clip_weights_(Tensor(a!)[] tensors, float clip_value) -> ()");
}

TORCH_LIBRARY_IMPL(pyfast_gan, CPU, m) {
  m.impl("clip_weights_", &clip_weights_cpu);
}

TORCH_LIBRARY_IMPL(pyfast_gan, ADInplaceOrView, m) {
  m.impl("clip_weights_", &clip_weights_inplace_or_view);
}

}  // namespace pyfast_gan
