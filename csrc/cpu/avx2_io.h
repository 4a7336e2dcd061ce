// AVX2 8-lane load/store helpers shared by the CPU kernels of the penalty family.
// Converts fp32/fp16/bf16 storage to and from fp32 lanes. The target is the common
// subset "avx2,f16c" so these always_inline helpers inline into callers built for
// "avx2,f16c" or "avx2,fma,f16c"; they contain no multiply-add, so FMA makes no
// difference to their results.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#define PFG_AVX2_IO __attribute__((target("avx2,f16c"), always_inline)) static inline

namespace pyfast_gan {

PFG_AVX2_IO __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
PFG_AVX2_IO __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
PFG_AVX2_IO __m256 load8(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
PFG_AVX2_IO void store8(float* p, __m256 x) { _mm256_storeu_ps(p, x); }
PFG_AVX2_IO void store8(c10::Half* p, __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}
PFG_AVX2_IO void store8(c10::BFloat16* p, __m256 x) {
  // Round to nearest even, as c10::BFloat16's conversion; NaN stays a quiet NaN.
  __m256i xi = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(xi, 16), _mm256_set1_epi32(1));
  xi = _mm256_srli_epi32(_mm256_add_epi32(xi, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  xi = _mm256_blendv_epi8(xi, _mm256_set1_epi32(0x7fc0), nan);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(xi), _mm256_extracti128_si256(xi, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

}  // namespace pyfast_gan

#undef PFG_AVX2_IO
#endif
