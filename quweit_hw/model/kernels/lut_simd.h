// SIMD helpers shared by the LUT layer kernels (lut_kernels.cpp) and the fused block kernels
// (block_kernels.cpp, blocked_kernels.cpp): on AVX2 a LUT's table signs as bit words, looked up
// for eight addresses at once; on AVX-512 the EFD input gradient for 16 samples (EfdRows16); the blocked layout's block size.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

// Samples per block of the blocked layout (blocked_kernels.cpp): (blocks, rows, kBlockSamples).
// Measured on the 2-core Sapphire Rapids training machine, block step of bench/train_step.py,
// the ratio to the dense step, random mapping, one thread: 64: 3.55-3.94x, 128: 3.36-3.62x,
// 256: 3.36-3.40x, 512: 3.88x (local: 3.50-3.55, 3.17-3.24, 3.15-3.19, 3.38x). Longer
// segments of each row for the prefetcher, while a block's region (rows x 1 KB: 1-2 MB)
// still fits the core's 2 MB L2.
constexpr int64_t kBlockSamples = 256;

#if defined(__AVX2__)
#include <immintrin.h>

// The table's signs as bit words: bit k of word k / 32 is [table[k] > 0] (n <= 8: 8 words).
inline int table_words(const float* table, int n, uint32_t* words) {
  const int size = 1 << n, count = std::max(1, size / 32);
  for (int w = 0; w < count; ++w) words[w] = 0;
  for (int k = 0; k < size; ++k) words[k >> 5] |= uint32_t(table[k] > 0.0f) << (k & 31);
  return count;
}

// [table[a] > 0] as 0/1 int32 for eight addresses a, from the words of `table_words`:
// word k shifted by a - 32k; srlv gives 0 for counts outside 0..31.
inline __m256i table_bits8(const uint32_t* words, int count, __m256i a) {
  __m256i bit = _mm256_setzero_si256();
  for (int k = 0; k < count; ++k)
    bit = _mm256_or_si256(bit, _mm256_srlv_epi32(_mm256_set1_epi32(int(words[k])),
                                                 _mm256_sub_epi32(a, _mm256_set1_epi32(32 * k))));
  return _mm256_and_si256(bit, _mm256_set1_epi32(1));
}

inline void store_addresses(uint8_t* dst, __m256i a) {  // 8 int32 in 0..255 -> 8 bytes
  const __m256i p8 = _mm256_packus_epi16(_mm256_packus_epi32(a, a), _mm256_setzero_si256());
  const uint32_t lo = uint32_t(_mm256_extract_epi32(p8, 0)), hi = uint32_t(_mm256_extract_epi32(p8, 4));
  std::memcpy(dst, &lo, 4);
  std::memcpy(dst + 4, &hi, 4);
}
// c[l][s] = r[s][l]: the 8x8 transpose of eight rows of eight floats.
inline void transpose8(const __m256* r, __m256* c) {
  __m256 t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 2; ++k) {
    u[4 * k] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    c[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    c[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

// The EFD input gradient of one LUT with N <= 6 inputs on AVX-512 (lut_kernels.cpp's dx span,
// rows or blocks). Each input bit's compact row (at most 32 floats) sits in
// two registers and one two-register permute looks it up for 16 addresses; the compact index
// (bit l removed) is one shift and one select. N is a template argument so that the rows stay
// in registers. No transposes: the AVX2 span's 8x8 transpose is bound by the one shuffle port.
template <int N>
struct EfdRows16 {
  __m512 lo[N], hi[N];

  EfdRows16(const float* e_j, int64_t half) {
    const __mmask16 mlo = __mmask16((1u << (half < 16 ? half : 16)) - 1);
    const __mmask16 mhi = half > 16 ? __mmask16((1u << (half - 16)) - 1) : __mmask16(0);
    for (int l = 0; l < N; ++l) {
      lo[l] = _mm512_maskz_loadu_ps(mlo, e_j + l * half);
      hi[l] = _mm512_maskz_loadu_ps(mhi, e_j + l * half + 16);
    }
  }

  // d[l][off + s] += E[l, c(a[s], l)] * g[s] for the 16 samples s, l increasing (the reference's order;
  // product and sum rounded apart, as -ffp-contract=off keeps them).
  inline void add16(const uint8_t* a, const float* g, float* const* d, int64_t off) const {
    const __m512i av = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
    const __m512i above = _mm512_srli_epi32(av, 1);
    const __m512 gv = _mm512_loadu_ps(g);
    for (int l = 0; l < N; ++l) {  // low ? a : a >> 1, low = the bits below l
      const __m512i c = _mm512_ternarylogic_epi32(_mm512_set1_epi32((1 << l) - 1), av, above, 0xCA);
      const __m512 term = _mm512_mul_ps(_mm512_permutex2var_ps(lo[l], c, hi[l]), gv);
      _mm512_storeu_ps(d[l] + off, _mm512_add_ps(_mm512_loadu_ps(d[l] + off), term));
    }
  }
};

// f.template operator()<N>() for the fan-in n in 1..6; false for larger n.
template <typename F>
inline bool with_fan_in(int n, F&& f) {
  switch (n) {
    case 1: f.template operator()<1>(); return true;
    case 2: f.template operator()<2>(); return true;
    case 3: f.template operator()<3>(); return true;
    case 4: f.template operator()<4>(); return true;
    case 5: f.template operator()<5>(); return true;
    case 6: f.template operator()<6>(); return true;
    default: return false;
  }
}
#endif
