// Triton's philox (language/random.py), the one copy used by the CPU and the CUDA interpolate
// kernels: the same seed gives the same alpha on every backend (tests/test_interpolate.py
// checks the CPU kernel against Triton's own tl.rand).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define PFG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PFG_HOST_DEVICE inline
#endif

namespace pyfast_gan {

PFG_HOST_DEVICE uint32_t umulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// key = seed (lo, hi), counter = (n, 0, 0, 0), ten rounds; the first output word is mapped
// to [0, 1) as uint_to_uniform_float does.
PFG_HOST_DEVICE float philox_uniform(uint64_t seed, uint32_t counter) {
  uint32_t c0 = counter, c1 = 0, c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    const uint32_t a = c0, b = c2;
    c0 = umulhi32(0xCD9E8D57u, b) ^ c1 ^ k0;
    c2 = umulhi32(0xD2511F53u, a) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * b;
    c3 = 0xD2511F53u * a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  int32_t x = static_cast<int32_t>(c0);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

}  // namespace pyfast_gan

#undef PFG_HOST_DEVICE
