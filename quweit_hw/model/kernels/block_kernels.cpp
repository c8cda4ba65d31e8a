// Compiled CPU kernels of the fused LUT-MLP block path (quweit_hw.model.kernels.block).
//
// Inside the block the LUT layers hand their 0/1 outputs on as bytes, not floats (a quarter
// of the memory traffic, and the next layer forms 32 addresses per vector instead of 8), and
// the first layer reads the quantised input q itself: bit (f, t) of the thermometer is
// [q[b, f] > theta[f, t]], compared where it is needed, so the (F*T, N) bit rows are never
// formed. Same layout as lut_kernels.cpp: rows, (features, batch) contiguous; same
// parallelism (at::parallel_for over LUTs or groups, each output written by one task).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel_args.h"
#include "lut_simd.h"

namespace {

constexpr int kMaxFanIn = 8;  // byte addresses

// The sign of each table entry, sign[a] = [table[a] > 0], for the scalar loops.
template <typename scalar_t>
void table_signs(const scalar_t* table, int n, uint8_t* sign) {
  for (int a = 0; a < (1 << n); ++a) sign[a] = table[a] > scalar_t(0) ? 1 : 0;
}

// aj[b] = sum_l [rows[l][b] > level[l]] << l;  yj[b] = [table[aj[b]] > 0] (bytes). The rows are the
// quantised input q (row_t = scalar_t) or bytes: level 0 on 0/1 bytes reads a layer's outputs, level t
// on thermometer levels (the count of thresholds below q) is the thermometer's bit t.
template <typename row_t, typename scalar_t>
void span_scalar(const row_t* const* rows, const row_t* level, int n, const scalar_t* table, uint8_t* yj,
                 uint8_t* aj, int64_t len) {
  uint8_t sign[256];
  table_signs(table, n, sign);
  for (int64_t b = 0; b < len; ++b) {
    int a = 0;
    for (int l = 0; l < n; ++l) a |= int(rows[l][b] > level[l]) << l;
    aj[b] = uint8_t(a);
    yj[b] = sign[a];
  }
}

template <typename scalar_t>
void q_span(const scalar_t* const* qrows, const scalar_t* level, int n, const scalar_t* table, uint8_t* yj,
            uint8_t* aj, int64_t len) {
  span_scalar(qrows, level, n, table, yj, aj, len);
}

template <typename scalar_t>
void bytes_span(const uint8_t* const* rows, const uint8_t* level, int n, const scalar_t* table, uint8_t* yj,
                uint8_t* aj, int64_t len) {
  span_scalar(rows, level, n, table, yj, aj, len);
}

#if defined(__AVX2__)
template <>
void q_span<float>(const float* const* qrows, const float* level, int n, const float* table, uint8_t* yj,
                   uint8_t* aj, int64_t len) {
  uint32_t words[8];
  const int count = table_words(table, n, words);
  __m256 lv[kMaxFanIn];
  for (int l = 0; l < n; ++l) lv[l] = _mm256_set1_ps(level[l]);
  int64_t b = 0;
  for (; b + 8 <= len; b += 8) {
    __m256i a = _mm256_setzero_si256();
    for (int l = 0; l < n; ++l) {  // > ordered: false for NaN, as the reference's x > theta
      const __m256 gt = _mm256_cmp_ps(_mm256_loadu_ps(qrows[l] + b), lv[l], _CMP_GT_OQ);
      a = _mm256_or_si256(a, _mm256_and_si256(_mm256_castps_si256(gt), _mm256_set1_epi32(1 << l)));
    }
    store_addresses(aj + b, a);
    store_addresses(yj + b, table_bits8(words, count, a));
  }
  for (; b < len; ++b) {
    int a = 0;
    for (int l = 0; l < n; ++l) a |= int(qrows[l][b] > level[l]) << l;
    aj[b] = uint8_t(a);
    yj[b] = uint8_t((words[a >> 5] >> (a & 31)) & 1);
  }
}

#if defined(__AVX512BW__) && defined(__AVX512VBMI__)
// n <= 6 on AVX-512 VBMI: 64 samples per step, each input a byte compare into a mask, and the
// 64 signs one byte each, looked up by one byte permute (vpermb) at the address.
inline void bytes_span_vbmi(const uint8_t* const* rows, const uint8_t* level, int n, const float* table, uint8_t* yj,
                            uint8_t* aj, int64_t len) {
  __m512i above[6], bit[6];  // x > level  <=>  x >= level + 1 (level < 255)
  for (int l = 0; l < n; ++l) {
    above[l] = _mm512_set1_epi8(char(level[l] + 1));
    bit[l] = _mm512_set1_epi8(char(1 << l));
  }
  alignas(64) uint8_t signs[64] = {};
  for (int a = 0; a < (1 << n); ++a) signs[a] = uint8_t(table[a] > 0.0f);
  const __m512i sv = _mm512_load_si512(signs);
  int64_t b = 0;
  for (; b + 64 <= len; b += 64) {
    __m512i a = _mm512_setzero_si512();
    for (int l = 0; l < n; ++l) {
      const __m512i x = _mm512_loadu_si512(rows[l] + b);
      a = _mm512_mask_add_epi8(a, _mm512_cmpge_epu8_mask(x, above[l]), a, bit[l]);  // distinct bits: + is |
    }
    _mm512_storeu_si512(aj + b, a);
    _mm512_storeu_si512(yj + b, _mm512_permutexvar_epi8(a, sv));
  }
  for (; b < len; ++b) {
    int a = 0;
    for (int l = 0; l < n; ++l) a |= int(rows[l][b] > level[l]) << l;
    aj[b] = uint8_t(a);
    yj[b] = signs[a];
  }
}
#endif

// n <= 6: the 64 signs as 8 bytes, looked up by the address's high 3 bits (a byte shuffle) and
// tested at its low 3 bits; 32 samples per step.
template <>
void bytes_span<float>(const uint8_t* const* rows, const uint8_t* level, int n, const float* table, uint8_t* yj,
                       uint8_t* aj, int64_t len) {
  if (n > 6) return span_scalar(rows, level, n, table, yj, aj, len);
#if defined(__AVX512BW__) && defined(__AVX512VBMI__)
  return bytes_span_vbmi(rows, level, n, table, yj, aj, len);
#endif
  __m256i above[kMaxFanIn], bit[kMaxFanIn];  // x > level  <=>  max(x, level + 1) == x (level < 255)
  for (int l = 0; l < n; ++l) {
    above[l] = _mm256_set1_epi8(char(level[l] + 1));
    bit[l] = _mm256_set1_epi8(char(1 << l));
  }
  alignas(16) uint8_t octets[16] = {};
  for (int a = 0; a < (1 << n); ++a) octets[a >> 3] |= uint8_t((table[a] > 0.0f) << (a & 7));
  const __m256i signs = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(octets)));
  const __m256i masks = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0,
                                         1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i seven = _mm256_set1_epi8(7), one = _mm256_set1_epi8(1);
  int64_t b = 0;
  for (; b + 32 <= len; b += 32) {
    __m256i a = _mm256_setzero_si256();
    for (int l = 0; l < n; ++l) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[l] + b));
      a = _mm256_or_si256(a, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_max_epu8(x, above[l]), x), bit[l]));
    }
    const __m256i octet = _mm256_shuffle_epi8(signs, _mm256_and_si256(_mm256_srli_epi16(a, 3), seven));
    const __m256i mask = _mm256_shuffle_epi8(masks, _mm256_and_si256(a, seven));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(aj + b), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(yj + b), _mm256_min_epu8(_mm256_and_si256(octet, mask), one));
  }
  for (; b < len; ++b) {
    int a = 0;
    for (int l = 0; l < n; ++l) a |= int(rows[l][b] > level[l]) << l;
    aj[b] = uint8_t(a);
    yj[b] = (octets[a >> 3] >> (a & 7)) & 1;
  }
}
#endif

// One span of LUT j over its input rows: q rows (the first layer) or byte rows (later layers).
template <typename scalar_t>
void rows_span(const scalar_t* const* rows, const scalar_t* level, int n, const scalar_t* table, uint8_t* yj,
               uint8_t* aj, int64_t len) {
  q_span<scalar_t>(rows, level, n, table, yj, aj, len);
}

template <typename scalar_t>
void rows_span(const uint8_t* const* rows, const uint8_t* level, int n, const scalar_t* table, uint8_t* yj,
               uint8_t* aj, int64_t len) {
  bytes_span<scalar_t>(rows, level, n, table, yj, aj, len);
}

// A LUT layer on rows x (in, B) of row_t: q transposed (the first layer, row_t = scalar_t) or
// a layer's byte outputs (row_t = uint8_t). Input l of LUT j is [x[map[j*n + l], b] >
// level[j*n + l]]. The outputs y are rows; the addresses, which only the backward reads, are
// written in its blocked layout (blocks, out, kBlockSamples), zero past the batch, from a row
// buffer that stays in L1. Parallel over LUTs.
template <typename row_t, typename scalar_t>
void forward_rows_impl(const row_t* x, const int64_t* map, const row_t* level, const scalar_t* luts, uint8_t* y,
                       uint8_t* addr, int64_t out, int64_t n, int64_t batch) {
  constexpr int64_t S = kBlockSamples;
  const int64_t nb = (batch + S - 1) / S;
  at::parallel_for(0, out, 16, [&](int64_t j0, int64_t j1) {
    const row_t* rows[kMaxFanIn];
    std::vector<uint8_t> aj(nb * S, 0);
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t l = 0; l < n; ++l) rows[l] = x + map[j * n + l] * batch;
      rows_span<scalar_t>(rows, level + j * n, int(n), luts + (j << n), y + j * batch, aj.data(), batch);
      for (int64_t c = 0; c < nb; ++c) std::memcpy(addr + (c * out + j) * S, aj.data() + c * S, S);
    }
  });
}

// counts[b, c] = sum_{m < k} y[c*k + m, b]: the group popcount of the last layer's bytes,
// written in the block's (batch, C) layout. Parallel over tiles of kGroups groups by kTile
// samples, whose sums are written kGroups at a time: one group at a time wrote one float per
// 256-byte row of counts, a cache line per value.
template <typename scalar_t>
void group_counts_impl(const uint8_t* y, scalar_t* counts, int64_t groups, int64_t k, int64_t batch) {
  constexpr int64_t kGroups = 16, kTile = 256;
  const int64_t tiles = (batch + kTile - 1) / kTile;
  at::parallel_for(0, (groups + kGroups - 1) / kGroups * tiles, 1, [&](int64_t t0, int64_t t1) {
    int32_t acc[kGroups][kTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t / tiles * kGroups, nc = std::min(kGroups, groups - c0);
      const int64_t b0 = t % tiles * kTile, len = std::min(kTile, batch - b0);
      for (int64_t c = 0; c < nc; ++c) {
        std::fill(acc[c], acc[c] + kTile, 0);
        for (int64_t m = 0; m < k; ++m) {
          const uint8_t* r = y + ((c0 + c) * k + m) * batch + b0;
          for (int64_t b = 0; b < len; ++b) acc[c][b] += r[b];
        }
      }
      for (int64_t b = 0; b < len; ++b)
        for (int64_t c = 0; c < nc; ++c) counts[(b0 + b) * groups + c0 + c] = scalar_t(acc[c][b]);
    }
  });
}

void check_blocked_addr(const at::Tensor& addr, int64_t out, int64_t batch, const char* op) {
  TORCH_CHECK(addr.dim() == 3 && addr.size(0) == (batch + kBlockSamples - 1) / kBlockSamples && addr.size(1) == out &&
                  addr.size(2) == kBlockSamples,
              "quweit_lut.", op, ": addr must be blocked, (blocks, LUTs, ", kBlockSamples, ")");
}

void block_forward_q(const at::Tensor& qT, const at::Tensor& row, const at::Tensor& level, const at::Tensor& luts,
                     at::Tensor& y, at::Tensor& addr) {
  check_cpu_contiguous({&qT, &row, &level, &luts, &y, &addr}, "block_forward_q");
  const int64_t out = luts.size(0), n = row.numel() / out;
  TORCH_CHECK(n >= 1 && n <= kMaxFanIn && luts.size(1) == (int64_t(1) << n), "quweit_lut.block_forward_q: bad fan-in");
  TORCH_CHECK(y.scalar_type() == at::kByte && addr.scalar_type() == at::kByte, "quweit_lut.block_forward_q: bytes");
  check_blocked_addr(addr, out, qT.size(1), "block_forward_q");
  dispatch_scalar(qT, [&](auto s) {
    using scalar_t = decltype(s);
    forward_rows_impl<scalar_t, scalar_t>(qT.data_ptr<scalar_t>(), row.data_ptr<int64_t>(), level.data_ptr<scalar_t>(),
                             luts.data_ptr<scalar_t>(), y.data_ptr<uint8_t>(), addr.data_ptr<uint8_t>(), out, n,
                             qT.size(1));
  });
}

void block_forward_bytes(const at::Tensor& x, const at::Tensor& mapping, const at::Tensor& level,
                         const at::Tensor& luts, at::Tensor& y, at::Tensor& addr) {
  check_cpu_contiguous({&x, &mapping, &level, &luts, &y, &addr}, "block_forward_bytes");
  TORCH_CHECK(level.scalar_type() == at::kByte && level.numel() == mapping.numel(),
              "quweit_lut.block_forward_bytes: one byte level per input");
  const int64_t out = luts.size(0), n = mapping.numel() / out;
  TORCH_CHECK(n >= 1 && n <= kMaxFanIn && luts.size(1) == (int64_t(1) << n), "quweit_lut.block_forward_bytes: bad fan-in");
  TORCH_CHECK(x.scalar_type() == at::kByte && y.scalar_type() == at::kByte && addr.scalar_type() == at::kByte,
              "quweit_lut.block_forward_bytes: bytes");
  check_blocked_addr(addr, out, x.size(1), "block_forward_bytes");
  dispatch_scalar(luts, [&](auto s) {
    using scalar_t = decltype(s);
    forward_rows_impl<uint8_t, scalar_t>(x.data_ptr<uint8_t>(), mapping.data_ptr<int64_t>(), level.data_ptr<uint8_t>(),
                                 luts.data_ptr<scalar_t>(),
                                 y.data_ptr<uint8_t>(), addr.data_ptr<uint8_t>(), out, n, x.size(1));
  });
}

// levels[f, b] = the number of thresholds theta[f, :] below q[b, f]. With strictly increasing
// thresholds bit t of the thermometer is [levels > t] exactly (the bits set are a prefix).
template <typename scalar_t>
void levels_impl(const scalar_t* q, const scalar_t* theta, uint8_t* levels, int64_t batch, int64_t features,
                 int64_t nthr) {
  at::parallel_for(0, features, 1, [&](int64_t f0, int64_t f1) {
    std::vector<scalar_t> col(batch);
    std::vector<int32_t> count(batch);  // as wide as a float, so the compare-and-add vectorises
    for (int64_t f = f0; f < f1; ++f) {
      for (int64_t b = 0; b < batch; ++b) col[b] = q[b * features + f];
      std::fill(count.begin(), count.end(), 0);
      for (int64_t t = 0; t < nthr; ++t) {
        const scalar_t th = theta[f * nthr + t];
        for (int64_t b = 0; b < batch; ++b) count[b] += col[b] > th ? 1 : 0;
      }
      uint8_t* o = levels + f * batch;
      for (int64_t b = 0; b < batch; ++b) o[b] = uint8_t(count[b]);
    }
  });
}

void block_levels(const at::Tensor& q, const at::Tensor& theta, at::Tensor& levels) {
  check_cpu_contiguous({&q, &theta, &levels}, "block_levels");
  TORCH_CHECK(levels.scalar_type() == at::kByte && theta.size(1) < 255, "quweit_lut.block_levels: bytes, T < 255");
  dispatch_scalar(q, [&](auto s) {
    using scalar_t = decltype(s);
    levels_impl<scalar_t>(q.data_ptr<scalar_t>(), theta.data_ptr<scalar_t>(), levels.data_ptr<uint8_t>(), q.size(0),
                          q.size(1), theta.size(1));
  });
}

void block_group_counts(const at::Tensor& y, at::Tensor& counts) {
  check_cpu_contiguous({&y, &counts}, "block_group_counts");
  const int64_t groups = counts.size(1);
  TORCH_CHECK(y.scalar_type() == at::kByte && y.size(0) % groups == 0, "quweit_lut.block_group_counts: bad rows");
  dispatch_scalar(counts, [&](auto s) {
    using scalar_t = decltype(s);
    group_counts_impl<scalar_t>(y.data_ptr<uint8_t>(), counts.data_ptr<scalar_t>(), groups, y.size(0) / groups,
                                y.size(1));
  });
}

// ------------------------------------------------------------------------- quantizer

// LUTMLP.quantize, forward and straight-through backward, one pass each where the reference
// takes five autograd nodes (div, round, the detached difference, add, clamp) and two
// comparisons per element in the backward. r is the reference's own x + (round(x) - x)
// (round half to even): the integer round(x), +0 where the reference's sum gives +0 for a
// negative x that rounds to zero, NaN for an infinite x; NaN stays NaN through the clamp
// (the comparisons are false), as torch's clamp keeps it.
template <typename scalar_t>
inline scalar_t quantize_round(scalar_t h, scalar_t s) {
  const scalar_t x = h / s;
  return x + (std::nearbyint(x) - x);  // default rounding mode: to nearest, ties to even
}

#if defined(__AVX512F__)
// float32, 16 at a time (GCC leaves the loop below scalar: vrndscaless per element).
inline __m512 quantize_round16(__m512 h, __m512 s) {
  const __m512 x = _mm512_div_ps(h, s);
  const __m512 r = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_add_ps(x, _mm512_sub_ps(r, x));
}
#endif

template <typename scalar_t>
void quantize_forward_impl(const scalar_t* h, scalar_t s, scalar_t lo, scalar_t hi, scalar_t* q, int64_t count) {
  at::parallel_for(0, count, 16384, [&](int64_t i0, int64_t i1) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      const __m512 vs = _mm512_set1_ps(s), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
      for (; i0 + 16 <= i1; i0 += 16) {
        const __m512 r = quantize_round16(_mm512_loadu_ps(h + i0), vs);
        const __m512 c = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(r, vlo, _CMP_LT_OQ), r, vlo);
        _mm512_storeu_ps(q + i0, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(r, vhi, _CMP_GT_OQ), c, vhi));
      }
    }
#endif
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t r = quantize_round(h[i], s);
      q[i] = r < lo ? lo : (r > hi ? hi : r);
    }
  });
}

// dh = g / s where lo <= r <= hi (the clamp's own test, inclusive), 0 elsewhere: the
// reference's where(mask, g, 0) followed by the division's backward.
template <typename scalar_t>
void quantize_backward_impl(const scalar_t* h, const scalar_t* g, scalar_t s, scalar_t lo, scalar_t hi, scalar_t* dh,
                            int64_t count) {
  at::parallel_for(0, count, 16384, [&](int64_t i0, int64_t i1) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      const __m512 vs = _mm512_set1_ps(s), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
      for (; i0 + 16 <= i1; i0 += 16) {
        const __m512 r = quantize_round16(_mm512_loadu_ps(h + i0), vs);
        const __mmask16 in = _mm512_cmp_ps_mask(r, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r, vhi, _CMP_LE_OQ);
        _mm512_storeu_ps(dh + i0, _mm512_div_ps(_mm512_maskz_loadu_ps(in, g + i0), vs));
      }
    }
#endif
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t r = quantize_round(h[i], s);
      dh[i] = (r >= lo && r <= hi ? g[i] : scalar_t(0)) / s;
    }
  });
}

void quantize_forward(const at::Tensor& h, const at::Tensor& scale, double lo, double hi, at::Tensor& q) {
  check_cpu_contiguous({&h, &scale, &q}, "quantize_forward");
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == h.scalar_type() && q.sizes() == h.sizes() &&
                  q.scalar_type() == h.scalar_type(),
              "quweit_lut.quantize_forward: bad shapes");
  dispatch_scalar(h, [&](auto v) {
    using scalar_t = decltype(v);
    quantize_forward_impl<scalar_t>(h.data_ptr<scalar_t>(), *scale.data_ptr<scalar_t>(), scalar_t(lo), scalar_t(hi),
                                    q.data_ptr<scalar_t>(), h.numel());
  });
}

void quantize_backward(const at::Tensor& h, const at::Tensor& g, const at::Tensor& scale, double lo, double hi,
                       at::Tensor& dh) {
  check_cpu_contiguous({&h, &g, &scale, &dh}, "quantize_backward");
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == h.scalar_type() && g.sizes() == h.sizes() &&
                  dh.sizes() == h.sizes() && g.scalar_type() == h.scalar_type() && dh.scalar_type() == h.scalar_type(),
              "quweit_lut.quantize_backward: bad shapes");
  dispatch_scalar(h, [&](auto v) {
    using scalar_t = decltype(v);
    quantize_backward_impl<scalar_t>(h.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), *scale.data_ptr<scalar_t>(),
                                     scalar_t(lo), scalar_t(hi), dh.data_ptr<scalar_t>(), h.numel());
  });
}

// ------------------------------------------------------------------------- EFD table

// E[j, l, c] = alpha * sum_k sign(k_l) * beta^(number of bits m != l where k and a differ) * L[j, k],
// a the address c with a 0 bit inserted at l (the compact table of kernels.lut.compact_table,
// exponential EFD). The weight is a product over the bits m != l, so the sum is a difference
// along bit l followed by the 2x2 map (x0, x1) -> (x0 + beta x1, x1 + beta x0) along each other
// bit: about n * n * 2**n operations per LUT instead of the n * 4**n of the dense product.
// Lanes are LUTs (eight at a time), so every step is one vertical vector operation.
template <typename scalar_t>
void efd_table_exp_generic(const scalar_t* luts, scalar_t* e, int64_t out, int64_t first, int64_t n, scalar_t alpha,
                           scalar_t beta) {
  constexpr int V = 8;
  const int64_t size = int64_t(1) << n, half = size / 2;
  luts += first * size;
  e += first * n * half;
  out -= first;
  at::parallel_for(0, (out + V - 1) / V, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> t(size * V), u(half * V);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * V, lanes = std::min<int64_t>(V, out - j0);
      std::fill(t.begin(), t.end(), scalar_t(0));
      for (int64_t v = 0; v < lanes; ++v)
        for (int64_t k = 0; k < size; ++k) t[k * V + v] = luts[(j0 + v) * size + k];
      for (int64_t l = 0; l < n; ++l) {
        const int64_t low = (int64_t(1) << l) - 1;
        for (int64_t c = 0; c < half; ++c) {
          const int64_t k0 = (c & low) | ((c & ~low) << 1), k1 = k0 | (int64_t(1) << l);
          for (int v = 0; v < V; ++v) u[c * V + v] = t[k1 * V + v] - t[k0 * V + v];
        }
        for (int64_t m = 0; m + 1 < n; ++m) {
          const int64_t bit = int64_t(1) << m;
          for (int64_t c = 0; c < half; ++c) {
            if (c & bit) continue;
            scalar_t* p = &u[c * V];
            scalar_t* q = &u[(c | bit) * V];
            for (int v = 0; v < V; ++v) {
              const scalar_t x0 = p[v], x1 = q[v];
              p[v] = x0 + beta * x1;
              q[v] = x1 + beta * x0;
            }
          }
        }
        for (int64_t v = 0; v < lanes; ++v)
          for (int64_t c = 0; c < half; ++c) e[((j0 + v) * n + l) * half + c] = alpha * u[c * V + v];
      }
    }
  });
}

template <typename scalar_t>
void efd_table_exp_impl(const scalar_t* luts, scalar_t* e, int64_t out, int64_t n, scalar_t alpha, scalar_t beta) {
  efd_table_exp_generic<scalar_t>(luts, e, out, 0, n, alpha, beta);
}

#if defined(__AVX2__)
// The same for float, eight LUTs per block of lanes (sixteen with AVX-512: two blocks of eight
// side by side in one register; the 256-bit halves need AVX512DQ), moved in and out with 8x8
// transposes.
#if defined(__AVX512F__) && defined(__AVX512DQ__)
using EfdVec = __m512;
constexpr int kEfdLanes = 16;
inline EfdVec efd_join(__m256 lo, __m256 hi) { return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1); }
inline __m256 efd_half(EfdVec x, int h) { return h ? _mm512_extractf32x8_ps(x, 1) : _mm512_castps512_ps256(x); }
inline EfdVec efd_set1(float x) { return _mm512_set1_ps(x); }
inline EfdVec efd_sub(EfdVec a, EfdVec b) { return _mm512_sub_ps(a, b); }
inline EfdVec efd_fma(EfdVec a, EfdVec b, EfdVec c) { return _mm512_fmadd_ps(a, b, c); }
inline EfdVec efd_mul(EfdVec a, EfdVec b) { return _mm512_mul_ps(a, b); }
#else
using EfdVec = __m256;
constexpr int kEfdLanes = 8;
inline EfdVec efd_join(__m256 lo, __m256) { return lo; }
inline __m256 efd_half(EfdVec x, int) { return x; }
inline EfdVec efd_set1(float x) { return _mm256_set1_ps(x); }
inline EfdVec efd_sub(EfdVec a, EfdVec b) { return _mm256_sub_ps(a, b); }
inline EfdVec efd_fma(EfdVec a, EfdVec b, EfdVec c) { return _mm256_add_ps(_mm256_mul_ps(a, b), c); }
inline EfdVec efd_mul(EfdVec a, EfdVec b) { return _mm256_mul_ps(a, b); }
#endif

template <>
void efd_table_exp_impl<float>(const float* luts, float* e, int64_t out, int64_t n, float alpha, float beta) {
  constexpr int H = kEfdLanes / 8;  // blocks of eight LUTs per register
  const int64_t size = int64_t(1) << n, half = size / 2, full = out / kEfdLanes * kEfdLanes;
  if (n < 4) return efd_table_exp_generic<float>(luts, e, out, 0, n, alpha, beta);
  const EfdVec va = efd_set1(alpha), vb = efd_set1(beta);
  at::parallel_for(0, full / kEfdLanes, 1, [&](int64_t b0, int64_t b1) {
    std::vector<__m256> tt(size * H);
    std::vector<EfdVec> t(size), u(half);
    __m256 r[8], c[8];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * kEfdLanes;
      for (int h = 0; h < H; ++h)
        for (int64_t k0 = 0; k0 < size; k0 += 8) {
          for (int v = 0; v < 8; ++v) r[v] = _mm256_loadu_ps(luts + (j0 + h * 8 + v) * size + k0);
          transpose8(r, &tt[h * size + k0]);
        }
      for (int64_t k = 0; k < size; ++k) t[k] = efd_join(tt[k], tt[(H - 1) * size + k]);
      for (int64_t l = 0; l < n; ++l) {
        const int64_t low = (int64_t(1) << l) - 1;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t k0 = (i & low) | ((i & ~low) << 1);
          u[i] = efd_sub(t[k0 | (int64_t(1) << l)], t[k0]);
        }
        for (int64_t m = 0; m + 1 < n; ++m) {
          const int64_t bit = int64_t(1) << m;
          for (int64_t i = 0; i < half; ++i) {
            if (i & bit) continue;
            const EfdVec x0 = u[i], x1 = u[i | bit];
            u[i] = efd_fma(vb, x1, x0);
            u[i | bit] = efd_fma(vb, x0, x1);
          }
        }
        for (int64_t i = 0; i < half; ++i) u[i] = efd_mul(va, u[i]);
        for (int64_t i0 = 0; i0 < half; i0 += 8)
          for (int h = 0; h < H; ++h) {
            for (int s = 0; s < 8; ++s) r[s] = efd_half(u[i0 + s], h);
            transpose8(r, c);
            for (int v = 0; v < 8; ++v) _mm256_storeu_ps(e + ((j0 + h * 8 + v) * n + l) * half + i0, c[v]);
          }
      }
    }
  });
  if (full < out) efd_table_exp_generic<float>(luts, e, out, full, n, alpha, beta);
}
#endif

void efd_table_exp(const at::Tensor& luts, double alpha, double beta, at::Tensor& e) {
  check_cpu_contiguous({&luts, &e}, "efd_table_exp");
  int64_t n = 0;
  while ((int64_t(1) << n) < luts.size(1)) ++n;
  TORCH_CHECK(n >= 1 && (int64_t(1) << n) == luts.size(1) && e.numel() == luts.size(0) * n * (luts.size(1) / 2),
              "quweit_lut.efd_table_exp: bad shapes");
  dispatch_scalar(luts, [&](auto s) {
    using scalar_t = decltype(s);
    efd_table_exp_impl<scalar_t>(luts.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), luts.size(0), n,
                                 scalar_t(alpha), scalar_t(beta));
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(quweit_lut, m) {
  m.def("block_forward_q(Tensor qT, Tensor row, Tensor level, Tensor luts, Tensor(a!) y, Tensor(b!) addr) -> ()",
        &block_forward_q);
  m.def("block_forward_bytes(Tensor x, Tensor mapping, Tensor level, Tensor luts, Tensor(a!) y, Tensor(b!) addr) -> ()",
        &block_forward_bytes);
  m.def("block_levels(Tensor q, Tensor theta, Tensor(a!) levels) -> ()", &block_levels);
  m.def("block_group_counts(Tensor y, Tensor(a!) counts) -> ()", &block_group_counts);
  m.def("quantize_forward(Tensor h, Tensor scale, float lo, float hi, Tensor(a!) q) -> ()", &quantize_forward);
  m.def("quantize_backward(Tensor h, Tensor g, Tensor scale, float lo, float hi, Tensor(a!) dh) -> ()",
        &quantize_backward);
  m.def("efd_table_exp(Tensor luts, float alpha, float beta, Tensor(a!) e) -> ()", &efd_table_exp);
}
