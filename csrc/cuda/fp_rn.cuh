// Correctly rounded arithmetic for the CUDA kernels. The build passes --use_fast_math
// (-prec-div=false -prec-sqrt=false -fmad=true): a plain `/` and sqrt() in fp32 are then
// approximate and `a * b + c` may be contracted into one FMA. Where a kernel must round as
// the CPU kernel and the PyTorch reference do (one IEEE rounding per operation, no
// contraction), it spells each operation as an _rn intrinsic through Fp<acc_t>, and writes
// an FMA only where the reference computes one.
#pragma once

namespace pyfast_gan {

template <typename acc_t>
struct Fp;

template <>
struct Fp<float> {
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
  static __device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
  static __device__ __forceinline__ float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
  static __device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
  static __device__ __forceinline__ float sqrt(float a) { return __fsqrt_rn(a); }
};

template <>
struct Fp<double> {
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
  static __device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
  static __device__ __forceinline__ double fma(double a, double b, double c) { return __fma_rn(a, b, c); }
  static __device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
  static __device__ __forceinline__ double sqrt(double a) { return __dsqrt_rn(a); }
};

}  // namespace pyfast_gan
