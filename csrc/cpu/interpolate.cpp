// Per-sample interpolation for the gradient penalty, CPU kernels.
//
//   x_hat[n] = alpha[n] * real[n] + (1 - alpha[n]) * fake[n]     (math in fp32; fp64 for fp64)
//
// One pass: reads real and fake once, writes x_hat once. The backward reads the
// incoming gradient once and writes both input gradients.
//
// interpolate_rand draws alpha[n] in the kernel from a counter-based Philox4x32-10
// stream keyed by `seed` with counter n, bit-for-bit the stream of Triton's
// tl.rand(seed, n), so the CPU, CUDA and Triton kernels agree on alpha for a seed.
#include "common.h"
#include "op_checks.h"
#include "philox.h"
#include "cpu/avx2_io.h"
#include "sample_layout.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace pyfast_gan {
namespace {

constexpr int64_t kChunk = 16384;

// Brings real and fake to one shared dense-per-sample layout (real's when it has one).
std::pair<at::Tensor, at::Tensor> common_layout(const at::Tensor& real, const at::Tensor& fake) {
  at::Tensor r = per_sample_dense(real) ? real : real.contiguous();
  at::Tensor f = fake.strides() == r.strides() ? fake : at::empty_like(r).copy_(fake);
  return {r, f};
}

template <typename scalar_t, typename acc_t>
inline void lerp_chunk(const scalar_t* __restrict__ r, const scalar_t* __restrict__ f, scalar_t* __restrict__ o,
                       acc_t a, acc_t b, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    o[i] = static_cast<scalar_t>(a * static_cast<acc_t>(r[i]) + b * static_cast<acc_t>(f[i]));
  }
}

template <typename scalar_t, typename acc_t>
inline void split_chunk(const scalar_t* __restrict__ g, scalar_t* __restrict__ gr, scalar_t* __restrict__ gf, acc_t a,
                        acc_t b, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const acc_t v = static_cast<acc_t>(g[i]);
    gr[i] = static_cast<scalar_t>(a * v);
    gf[i] = static_cast<scalar_t>(b * v);
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Baseline x86-64 build; fp32/fp16/bf16 get an AVX2 path chosen at run time
// (load8/store8 from cpu/avx2_io.h). a*r + b*f is rounded
// the way the reference rounds it: two products and a sum in fp32, no FMA, one
// final rounding to the storage dtype.
template <typename scalar_t>
__attribute__((target("avx2,f16c"))) void lerp_avx2(const scalar_t* __restrict__ r, const scalar_t* __restrict__ f,
                                                     scalar_t* __restrict__ o, float a, float b, int64_t len) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 x = _mm256_mul_ps(va, load8(r + i));
    const __m256 y = _mm256_mul_ps(vb, load8(f + i));
    store8(o + i, _mm256_add_ps(x, y));
  }
  for (; i < len; ++i) {
    const float x = a * static_cast<float>(r[i]);
    const float y = b * static_cast<float>(f[i]);
    o[i] = static_cast<scalar_t>(x + y);
  }
}

template <typename scalar_t>
__attribute__((target("avx2,f16c"))) void split_avx2(const scalar_t* __restrict__ g, scalar_t* __restrict__ gr,
                                                     scalar_t* __restrict__ gf, float a, float b, int64_t len) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 x = load8(g + i);
    store8(gr + i, _mm256_mul_ps(va, x));
    store8(gf + i, _mm256_mul_ps(vb, x));
  }
  for (; i < len; ++i) {
    gr[i] = static_cast<scalar_t>(a * static_cast<float>(g[i]));
    gf[i] = static_cast<scalar_t>(b * static_cast<float>(g[i]));
  }
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");

#define PFG_SPECIALIZE_AVX2(T)                                                                            \
  template <>                                                                                             \
  inline void lerp_chunk<T, float>(const T* __restrict__ r, const T* __restrict__ f, T* __restrict__ o, float a, \
                                   float b, int64_t len) {                                                \
    if (kHasAvx2) return lerp_avx2<T>(r, f, o, a, b, len);                                                \
    _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) {                                               \
      o[i] = static_cast<T>(a * static_cast<float>(r[i]) + b * static_cast<float>(f[i]));                 \
    }                                                                                                     \
  }                                                                                                       \
  template <>                                                                                             \
  inline void split_chunk<T, float>(const T* __restrict__ g, T* __restrict__ gr, T* __restrict__ gf, float a, \
                                    float b, int64_t len) {                                               \
    if (kHasAvx2) return split_avx2<T>(g, gr, gf, a, b, len);                                             \
    _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) {                                               \
      gr[i] = static_cast<T>(a * static_cast<float>(g[i]));                                               \
      gf[i] = static_cast<T>(b * static_cast<float>(g[i]));                                               \
    }                                                                                                     \
  }
PFG_SPECIALIZE_AVX2(float)
PFG_SPECIALIZE_AVX2(c10::Half)
PFG_SPECIALIZE_AVX2(c10::BFloat16)
#undef PFG_SPECIALIZE_AVX2
#endif

template <typename scalar_t, typename acc_t>
void lerp_samples(const scalar_t* r, const scalar_t* f, scalar_t* o, const acc_t* alpha, int64_t N, int64_t M) {
  const int64_t K = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, std::min(M, kChunk)));
  at::parallel_for(0, N * K, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / K, k = t % K;
      const int64_t off = n * M + k * kChunk;
      const int64_t len = std::min(kChunk, M - k * kChunk);
      lerp_chunk<scalar_t, acc_t>(r + off, f + off, o + off, alpha[n], acc_t(1) - alpha[n], len);
    }
  });
}

at::Tensor interpolate_cpu(const at::Tensor& real_in, const at::Tensor& fake_in, const at::Tensor& alpha_in) {
  check_interpolate_pair(real_in, fake_in);
  check_interpolate_alpha(alpha_in, real_in);
  const int64_t N = real_in.size(0);
  auto [real, fake] = common_layout(real_in, fake_in);
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor out = at::empty_like(real);
  const int64_t M = real.numel() / N;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "interpolate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    lerp_samples<scalar_t, acc_t>(real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
                                  out.mutable_data_ptr<scalar_t>(), alpha.const_data_ptr<acc_t>(), N, M);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_rand_cpu(const at::Tensor& real_in, const at::Tensor& fake_in,
                                                        const at::Tensor& seed) {
  check_interpolate_pair(real_in, fake_in);
  PFG_CHECK_ARG(seed.numel() == 1 && seed.scalar_type() == at::kLong, "seed", "must be a one-element int64 tensor");
  const int64_t N = real_in.size(0);
  const uint64_t s = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  at::Tensor alpha = at::empty({N}, real_in.options().dtype(acc_dtype(real_in.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "interpolate_rand_cpu_alpha", [&] {
    scalar_t* a = alpha.mutable_data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) a[n] = static_cast<scalar_t>(philox_uniform(s, static_cast<uint32_t>(n)));
  });
  return {interpolate_cpu(real_in, fake_in, alpha), alpha};
}

std::tuple<at::Tensor, at::Tensor> interpolate_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& alpha_in) {
  check_interpolate_backward(grad_out_in, alpha_in);
  const int64_t N = grad_out_in.size(0);
  const at::Tensor go = per_sample_dense(grad_out_in) ? grad_out_in : grad_out_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor grad_real = at::empty_like(go);
  at::Tensor grad_fake = at::empty_like(go);
  const int64_t M = go.numel() / N;
  const int64_t K = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "interpolate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = go.const_data_ptr<scalar_t>();
    scalar_t* gr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* gf = grad_fake.mutable_data_ptr<scalar_t>();
    const acc_t* al = alpha.const_data_ptr<acc_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, std::min(M, kChunk)));
    at::parallel_for(0, N * K, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / K, k = t % K;
        const int64_t off = n * M + k * kChunk;
        const int64_t len = std::min(kChunk, M - k * kChunk);
        split_chunk<scalar_t, acc_t>(g + off, gr + off, gf + off, al[n], acc_t(1) - al[n], len);
      }
    });
  });
  return {grad_real, grad_fake};
}

}  // namespace
}  // namespace pyfast_gan

TORCH_LIBRARY_FRAGMENT(pyfast_gan, m) {
  // alpha: (N,) fp32 (fp64 for fp64 inputs). x_hat keeps real's layout when it is dense.
  m.def("interpolate(Tensor real, Tensor fake, Tensor alpha) -> Tensor");
  // Draws alpha in the kernel (Philox, Triton's tl.rand stream); returns (x_hat, alpha).
  m.def("interpolate_rand(Tensor real, Tensor fake, Tensor seed) -> (Tensor, Tensor)");
  m.def("interpolate_backward(Tensor grad_out, Tensor alpha) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pyfast_gan, CPU, m) {
  m.impl("interpolate", &pyfast_gan::interpolate_cpu);
  m.impl("interpolate_rand", &pyfast_gan::interpolate_rand_cpu);
  m.impl("interpolate_backward", &pyfast_gan::interpolate_backward_cpu);
}
