// Fused per-sample gradient-norm penalty, CUDA kernels (see csrc/cpu/gradient_norm_penalty.cpp
// for the math, the zero-gradient rule and the layout rule).
//
// Forward: one read of grad. Each block reduces one chunk of one sample with
// vectorized 16-byte loads and fp32 accumulation and writes a partial sum; a tiny
// second kernel adds each sample's partials in a fixed order (deterministic, no
// atomics, no memset) and applies the penalty.
// Backward: one read of grad, one write of grad_input, coef computed per thread.
//
// Rounding: the finalize and scale kernels round as the CPU kernel does (IEEE sqrt and
// division, one rounding per operation; see cuda/fp_rn.cuh on --use_fast_math), so given
// the same sums of squares the norms, penalties and input gradients are bit-identical to
// the CPU kernel's for fp32 and fp64. The sums themselves are added in another order than
// on the CPU (warp shuffles vs AVX2 lanes) and agree within rounding only.
#include "common.h"
#include "op_checks.h"
#include "cuda/fp_rn.cuh"
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
constexpr int64_t kChunk = 8192;  // elements per block: 32 per thread at 256 threads

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : acc_t(0);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

// V > 1 requires M % V == 0 and a 16-byte aligned base (checked on the host), so
// every chunk start (a multiple of kChunk) is aligned too.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) sumsq_partial_kernel(const scalar_t* __restrict__ g,
                                                                  acc_t* __restrict__ partial, int64_t M, int64_t K) {
  const int64_t n = blockIdx.x / K, k = blockIdx.x % K;
  const int64_t start = k * kChunk;
  const int64_t end = min(M, start + kChunk);
  const scalar_t* p = g + n * M;
  acc_t acc = 0;
  for (int64_t i = start + int64_t(threadIdx.x) * V; i < end; i += int64_t(kThreads) * V) {
    const VecT<scalar_t, V> x = *reinterpret_cast<const VecT<scalar_t, V>*>(p + i);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t v = static_cast<acc_t>(x.v[j]);
      acc += v * v;
    }
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ partial, int64_t N, int64_t K, acc_t c, int mode,
                                acc_t* __restrict__ penalty, acc_t* __restrict__ norm) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  using F = Fp<acc_t>;
  acc_t s = 0;
  for (int64_t k = 0; k < K; ++k) s = F::add(s, partial[n * K + k]);
  const acc_t r = F::sqrt(s);
  norm[n] = r;
  if (mode == kTwoSided) {
    const acc_t d = F::sub(r, c);
    penalty[n] = F::mul(d, d);
  } else if (mode == kOneSided) {
    // max(r - c, 0) as on the CPU: a NaN norm gives a NaN penalty (`r > c ? ...` gave 0 and
    // hid a NaN gradient from the trainer's non-finite skip).
    const acc_t d = r <= c ? acc_t(0) : F::sub(r, c);
    penalty[n] = F::mul(d, d);
  } else {
    penalty[n] = F::mul(r, r);
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) scale_kernel(const scalar_t* __restrict__ g, scalar_t* __restrict__ out,
                                                          const acc_t* __restrict__ gp, const acc_t* __restrict__ norm,
                                                          acc_t c, int mode, int64_t M, int64_t K) {
  const int64_t n = blockIdx.x / K, k = blockIdx.x % K;
  const int64_t start = k * kChunk;
  const int64_t end = min(M, start + kChunk);
  using F = Fp<acc_t>;
  const acc_t r = norm[n];
  // gp * 2 * (r - c) / r, evaluated left to right as the CPU kernel does.
  const acc_t gp2 = F::mul(gp[n], acc_t(2));
  acc_t coef;
  if (mode == kTwoSided) {
    coef = r > 0 ? F::div(F::mul(gp2, F::sub(r, c)), r) : acc_t(0);
  } else if (mode == kOneSided) {
    coef = (r > 0 && r > c) ? F::div(F::mul(gp2, F::sub(r, c)), r) : acc_t(0);
  } else {
    coef = gp2;
  }
  const scalar_t* p = g + n * M;
  scalar_t* q = out + n * M;
  for (int64_t i = start + int64_t(threadIdx.x) * V; i < end; i += int64_t(kThreads) * V) {
    const VecT<scalar_t, V> x = *reinterpret_cast<const VecT<scalar_t, V>*>(p + i);
    VecT<scalar_t, V> y;
#pragma unroll
    for (int j = 0; j < V; ++j) y.v[j] = static_cast<scalar_t>(F::mul(coef, static_cast<acc_t>(x.v[j])));
    *reinterpret_cast<VecT<scalar_t, V>*>(q + i) = y;
  }
}

template <typename scalar_t>
bool can_vectorize(const void* p, int64_t M) {
  constexpr int V = 16 / sizeof(scalar_t);
  return M % V == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

void check_grad(const at::Tensor& grad) {
  PFG_CHECK_ARG(grad.is_cuda(), "grad", "must be a CUDA tensor, got device ", grad.device());
  check_penalty_grad(grad);
}

std::tuple<at::Tensor, at::Tensor> gradient_norm_penalty_cuda(const at::Tensor& grad_in, double center,
                                                              c10::string_view mode_s) {
  check_grad(grad_in);
  const int mode = parse_penalty_mode(mode_s);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = per_sample_dense(grad_in) ? grad_in : grad_in.contiguous();
  const int64_t N = grad.size(0);
  const int64_t M = grad.numel() / N;
  const auto opts = grad.options().dtype(acc_dtype(grad.scalar_type()));
  at::Tensor penalty = at::empty({N}, opts);
  at::Tensor norm = at::empty({N}, opts);
  const int64_t K = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  at::Tensor partial = at::empty({N * K}, opts);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_norm_penalty_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    acc_t* part = partial.mutable_data_ptr<acc_t>();
    constexpr int V = 16 / sizeof(scalar_t);
    if (can_vectorize<scalar_t>(g, M)) {
      sumsq_partial_kernel<scalar_t, acc_t, V><<<N * K, kThreads, 0, stream>>>(g, part, M, K);
    } else {
      sumsq_partial_kernel<scalar_t, acc_t, 1><<<N * K, kThreads, 0, stream>>>(g, part, M, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<acc_t><<<(N + 255) / 256, 256, 0, stream>>>(part, N, K, static_cast<acc_t>(center), mode,
                                                               penalty.mutable_data_ptr<acc_t>(),
                                                               norm.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {penalty, norm};
}

at::Tensor gradient_norm_penalty_backward_cuda(const at::Tensor& grad_penalty_in, const at::Tensor& grad_in,
                                               const at::Tensor& norm_in, double center, c10::string_view mode_s) {
  check_grad(grad_in);
  const int mode = parse_penalty_mode(mode_s);
  check_penalty_backward(grad_penalty_in, grad_in, norm_in);
  const int64_t N = grad_in.size(0);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = per_sample_dense(grad_in) ? grad_in : grad_in.contiguous();
  const at::Tensor gp = grad_penalty_in.contiguous();
  const at::Tensor norm = norm_in.contiguous();
  at::Tensor out = at::empty_like(grad);
  const int64_t M = grad.numel() / N;
  const int64_t K = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_norm_penalty_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    constexpr int V = 16 / sizeof(scalar_t);
    const acc_t c = static_cast<acc_t>(center);
    if (can_vectorize<scalar_t>(g, M) && can_vectorize<scalar_t>(o, M)) {
      scale_kernel<scalar_t, acc_t, V><<<N * K, kThreads, 0, stream>>>(
          g, o, gp.const_data_ptr<acc_t>(), norm.const_data_ptr<acc_t>(), c, mode, M, K);
    } else {
      scale_kernel<scalar_t, acc_t, 1><<<N * K, kThreads, 0, stream>>>(
          g, o, gp.const_data_ptr<acc_t>(), norm.const_data_ptr<acc_t>(), c, mode, M, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace pyfast_gan

TORCH_LIBRARY_IMPL(pyfast_gan, CUDA, m) {
  m.impl("gradient_norm_penalty", &pyfast_gan::gradient_norm_penalty_cuda);
  m.impl("gradient_norm_penalty_backward", &pyfast_gan::gradient_norm_penalty_backward_cuda);
}
