// Per-sample interpolation for the gradient penalty, CUDA kernels (see
// csrc/cpu/interpolate.cpp for the math). One pass with 16-byte vector loads;
// interpolate_rand draws alpha[n] in the kernel from Philox4x32-10 keyed by a
// device-side seed (no host sync), the same stream as Triton's tl.rand(seed, n).
//
// Rounding: a*x + b*y as two products and a sum, each rounded (no FMA contraction, which
// --use_fast_math allows; see cuda/fp_rn.cuh), as the CPU kernel and the reference round
// it, so with the same alpha the fp32/fp64 results are bit-identical to the CPU kernel's.
#include "common.h"
#include "op_checks.h"
#include "cuda/fp_rn.cuh"
#include "philox.h"
#include "sample_layout.h"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace pyfast_gan {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;

// RAND: alpha[n] comes from Philox(seed, n) and block (n, 0) stores it into alpha_out;
// otherwise it is read from the caller's alpha_in, which is never written.
template <typename scalar_t, typename acc_t, int V, bool RAND>
__global__ void __launch_bounds__(kThreads) lerp_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ f,
                                                         scalar_t* __restrict__ out, const acc_t* __restrict__ alpha_in,
                                                         acc_t* __restrict__ alpha_out,
                                                         const int64_t* __restrict__ seed, int64_t M, int64_t K) {
  using F = Fp<acc_t>;
  const int64_t n = blockIdx.x / K, k = blockIdx.x % K;
  acc_t a;
  if constexpr (RAND) {
    a = static_cast<acc_t>(philox_uniform(static_cast<uint64_t>(*seed), static_cast<uint32_t>(n)));
    if (k == 0 && threadIdx.x == 0) alpha_out[n] = a;
  } else {
    a = alpha_in[n];
  }
  const acc_t b = F::sub(acc_t(1), a);
  const int64_t base = n * M;
  const int64_t end = min(M, (k + 1) * kChunk);
  for (int64_t i = k * kChunk + int64_t(threadIdx.x) * V; i < end; i += int64_t(kThreads) * V) {
    const VecT<scalar_t, V> x = *reinterpret_cast<const VecT<scalar_t, V>*>(r + base + i);
    const VecT<scalar_t, V> y = *reinterpret_cast<const VecT<scalar_t, V>*>(f + base + i);
    VecT<scalar_t, V> z;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t ax = F::mul(a, static_cast<acc_t>(x.v[j]));
      const acc_t by = F::mul(b, static_cast<acc_t>(y.v[j]));
      z.v[j] = static_cast<scalar_t>(F::add(ax, by));
    }
    *reinterpret_cast<VecT<scalar_t, V>*>(out + base + i) = z;
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) lerp_backward_kernel(const scalar_t* __restrict__ g,
                                                                  scalar_t* __restrict__ gr, scalar_t* __restrict__ gf,
                                                                  const acc_t* __restrict__ alpha, int64_t M, int64_t K) {
  using F = Fp<acc_t>;
  const int64_t n = blockIdx.x / K, k = blockIdx.x % K;
  const acc_t a = alpha[n], b = F::sub(acc_t(1), a);
  const int64_t base = n * M;
  const int64_t end = min(M, (k + 1) * kChunk);
  for (int64_t i = k * kChunk + int64_t(threadIdx.x) * V; i < end; i += int64_t(kThreads) * V) {
    const VecT<scalar_t, V> x = *reinterpret_cast<const VecT<scalar_t, V>*>(g + base + i);
    VecT<scalar_t, V> u, w;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t v = static_cast<acc_t>(x.v[j]);
      u.v[j] = static_cast<scalar_t>(F::mul(a, v));
      w.v[j] = static_cast<scalar_t>(F::mul(b, v));
    }
    *reinterpret_cast<VecT<scalar_t, V>*>(gr + base + i) = u;
    *reinterpret_cast<VecT<scalar_t, V>*>(gf + base + i) = w;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_pair(const at::Tensor& real, const at::Tensor& fake) {
  PFG_CHECK_ARG(real.is_cuda(), "real", "must be a CUDA tensor, got device ", real.device());
  check_interpolate_pair(real, fake);
}

// RAND: `alpha` is the output the kernel draws into; otherwise the caller's alpha, read only.
template <bool RAND>
void launch_lerp(const at::Tensor& real_in, const at::Tensor& fake_in, at::Tensor& out, const at::Tensor& alpha,
                 const int64_t* seed) {
  at::Tensor real = per_sample_dense(real_in) ? real_in : real_in.contiguous();
  at::Tensor fake = fake_in.strides() == real.strides() ? fake_in : at::empty_like(real).copy_(fake_in);
  out = at::empty_like(real);
  const int64_t N = real.size(0);
  const int64_t M = real.numel() / N;
  const int64_t K = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "interpolate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const acc_t* a_in = RAND ? nullptr : alpha.const_data_ptr<acc_t>();
    acc_t* a_out = RAND ? alpha.mutable_data_ptr<acc_t>() : nullptr;
    if (M % V == 0 && aligned16(r) && aligned16(f) && aligned16(o)) {
      lerp_kernel<scalar_t, acc_t, V, RAND><<<N * K, kThreads, 0, stream>>>(r, f, o, a_in, a_out, seed, M, K);
    } else {
      lerp_kernel<scalar_t, acc_t, 1, RAND><<<N * K, kThreads, 0, stream>>>(r, f, o, a_in, a_out, seed, M, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor interpolate_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha_in) {
  check_pair(real, fake);
  check_interpolate_alpha(alpha_in, real);
  const c10::cuda::CUDAGuard guard(real.device());
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor out;
  launch_lerp<false>(real, fake, out, alpha, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_rand_cuda(const at::Tensor& real, const at::Tensor& fake,
                                                         const at::Tensor& seed) {
  check_pair(real, fake);
  PFG_CHECK_ARG(seed.numel() == 1 && seed.scalar_type() == at::kLong, "seed", "must be a one-element int64 tensor");
  PFG_CHECK_ARG(seed.device() == real.device(), "seed", "must be on ", real.device(), " (it is read in the kernel)");
  const c10::cuda::CUDAGuard guard(real.device());
  at::Tensor alpha = at::empty({real.size(0)}, real.options().dtype(acc_dtype(real.scalar_type())));
  at::Tensor out;
  launch_lerp<true>(real, fake, out, alpha, seed.const_data_ptr<int64_t>());
  return {out, alpha};
}

std::tuple<at::Tensor, at::Tensor> interpolate_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& alpha_in) {
  PFG_CHECK_ARG(grad_out_in.is_cuda(), "grad_out", "must be a CUDA tensor, got device ", grad_out_in.device());
  check_interpolate_backward(grad_out_in, alpha_in);
  const int64_t N = grad_out_in.size(0);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor go = per_sample_dense(grad_out_in) ? grad_out_in : grad_out_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor grad_real = at::empty_like(go);
  at::Tensor grad_fake = at::empty_like(go);
  const int64_t M = go.numel() / N;
  const int64_t K = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "interpolate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* g = go.const_data_ptr<scalar_t>();
    scalar_t* gr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* gf = grad_fake.mutable_data_ptr<scalar_t>();
    const acc_t* a = alpha.const_data_ptr<acc_t>();
    if (M % V == 0 && aligned16(g) && aligned16(gr) && aligned16(gf)) {
      lerp_backward_kernel<scalar_t, acc_t, V><<<N * K, kThreads, 0, stream>>>(g, gr, gf, a, M, K);
    } else {
      lerp_backward_kernel<scalar_t, acc_t, 1><<<N * K, kThreads, 0, stream>>>(g, gr, gf, a, M, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_real, grad_fake};
}

}  // namespace
}  // namespace pyfast_gan

TORCH_LIBRARY_IMPL(pyfast_gan, CUDA, m) {
  m.impl("interpolate", &pyfast_gan::interpolate_cuda);
  m.impl("interpolate_rand", &pyfast_gan::interpolate_rand_cuda);
  m.impl("interpolate_backward", &pyfast_gan::interpolate_backward_cuda);
}
