// Compiled CPU kernels of the DWN LUT layer and the thermometer (quweit_hw.model.kernels).
//
// Every kernel reproduces one step of the plain-torch reference in quweit_hw/nn.py; the
// Python side allocates the outputs, checks shapes and dtypes, and calls these through
// torch.ops.quweit_lut.*. Layout as in the reference: activations are *rows*, (features,
// batch) contiguous, so one feature's values over the batch are one contiguous vector.
//
// Parallelism: at::parallel_for, torch's own intra-op thread pool, so torch.set_num_threads
// governs these kernels too and no second OpenMP pool spins beside torch's. Every output
// element is written by exactly one task and accumulated in a fixed order (no atomics), so
// results do not depend on the thread count at all.
//
// Built with -ffp-contract=off: a*b+c stays a rounded product and a rounded sum, as in the
// reference, so the input gradient sums the same rounded terms in the same order.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "kernel_args.h"
#include "lut_simd.h"

namespace {

// The input gradient is parallel over batch tiles (each task owns dx[:, tile], no atomics).
// Measured on Zen 3 and on Sapphire Rapids: the longer a tile the faster (prefetching along
// rows beats keeping a tile's rows in L2, even in a buffer of the task's own), so a tile is
// the batch split evenly over the threads, in multiples of 16 samples. The result does not
// depend on the tile: each dx element sums its terms in the same order whatever the split.
int64_t batch_tile(int64_t batch, int64_t forced) {
  if (forced > 0) return std::max<int64_t>(1, std::min(forced, batch));
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t tile = ((batch + threads - 1) / threads + 15) / 16 * 16;
  return std::max<int64_t>(1, std::min(tile, batch));
}

// Position of address a in the compact EFD table of input bit l: bit l removed (the EFD
// gradient w.r.t. bit l does not depend on bit l itself, so only 2**(n-1) values exist).
inline int32_t compact_index(int32_t a, int32_t l) {
  return (a & ((1 << l) - 1)) | ((a >> (l + 1)) << l);
}

// ------------------------------------------------------------------------- spans
//
// A span is one LUT j over the samples [b0, b0 + len) of a batch tile. The generic spans
// are plain loops for any scalar and address type; on AVX2 the float32 / uint8 spans (the
// training case, n <= 8) are written with intrinsics, since the compiler vectorises the
// generic ones poorly (64-bit gather indices, the address accumulator kept in memory).

constexpr int kMaxFanIn = 16;

// aj[b] = sum_l [rows[l][b] != 0] << l;  yj[b] = [table[aj[b]] > 0].
template <typename scalar_t, typename addr_t>
void forward_span(const scalar_t* const* rows, int n, const scalar_t* table, scalar_t* yj, addr_t* aj,
                  int64_t len) {
  for (int64_t b = 0; b < len; ++b) {
    int32_t a = 0;
    for (int l = 0; l < n; ++l) a |= int32_t(rows[l][b] != scalar_t(0)) << l;
    aj[b] = static_cast<addr_t>(a);
    yj[b] = table[a] > scalar_t(0) ? scalar_t(1) : scalar_t(0);
  }
}

// drows[l][b] += e_j[l * half + c(aj[b], l)] * gj[b], l in increasing order for each b.
template <typename scalar_t, typename addr_t>
void dx_span(const scalar_t* e_j, int64_t half, const addr_t* aj, const scalar_t* gj, scalar_t* const* drows,
             int n, int64_t len) {
  for (int l = 0; l < n; ++l) {
    const scalar_t* ejl = e_j + l * half;
    scalar_t* d = drows[l];
    for (int64_t b = 0; b < len; ++b) d[b] += ejl[compact_index(aj[b], l)] * gj[b];
  }
}

// orows[l][b] = e_j[l * half + c(aj[b], l)] * gj[b].
template <typename scalar_t, typename addr_t>
void gsel_span(const scalar_t* e_j, int64_t half, const addr_t* aj, const scalar_t* gj, scalar_t* const* orows,
               int n, int64_t len) {
  for (int l = 0; l < n; ++l) {
    const scalar_t* ejl = e_j + l * half;
    scalar_t* o = orows[l];
    for (int64_t b = 0; b < len; ++b) o[b] = ejl[compact_index(aj[b], l)] * gj[b];
  }
}

#if defined(__AVX2__)
template <>
void forward_span<float, uint8_t>(const float* const* rows, int n, const float* table, float* yj, uint8_t* aj,
                                  int64_t len) {
  uint32_t words[8];
  const int count = table_words(table, n, words);
  const __m256 zero = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= len; b += 8) {
    __m256i a = _mm256_setzero_si256();
    for (int l = 0; l < n; ++l) {  // != 0 unordered, as the scalar (x != 0) is true for NaN
      const __m256 ne = _mm256_cmp_ps(_mm256_loadu_ps(rows[l] + b), zero, _CMP_NEQ_UQ);
      a = _mm256_or_si256(a, _mm256_and_si256(_mm256_castps_si256(ne), _mm256_set1_epi32(1 << l)));
    }
    _mm256_storeu_ps(yj + b, _mm256_cvtepi32_ps(table_bits8(words, count, a)));
    store_addresses(aj + b, a);
  }
  for (; b < len; ++b) {
    int32_t a = 0;
    for (int l = 0; l < n; ++l) a |= int32_t(rows[l][b] != 0.0f) << l;
    aj[b] = static_cast<uint8_t>(a);
    yj[b] = table[a] > 0.0f ? 1.0f : 0.0f;
  }
}

inline __m256i load_addresses(const uint8_t* src) {  // 8 bytes -> 8 int32
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
}

inline __m256i compact_index8(__m256i a, int l) {
  const __m256i low = _mm256_and_si256(a, _mm256_set1_epi32((1 << l) - 1));
  const __m256i high = _mm256_sll_epi32(_mm256_srl_epi32(a, _mm_cvtsi32_si128(l + 1)), _mm_cvtsi32_si128(l));
  return _mm256_or_si256(low, high);
}

// v[k] = T[c[k]] for a table of 8*R floats held in R registers: one in-register permute per
// register, then a tree of blends on the index bits 3, 4, ... (a gather is several times
// slower on the CPUs we train on).
template <int R>
inline __m256 lookup8(const __m256* T, __m256i c) {
  __m256 v[R];
  for (int r = 0; r < R; ++r) v[r] = _mm256_permutevar8x32_ps(T[r], c);
  int width = R;
  for (int bit = 3; width > 1; ++bit, width /= 2) {
    const __m256 pick = _mm256_castsi256_ps(_mm256_sll_epi32(c, _mm_cvtsi32_si128(31 - bit)));
    for (int r = 0; r < width / 2; ++r) v[r] = _mm256_blendv_ps(v[2 * r], v[2 * r + 1], pick);
  }
  return v[0];
}

// For each input bit l: the compact EFD row e_j[l*half ...] in R registers, then over the
// span's samples out[l][b] (+)= row[c(aj[b], l)] * gj[b]; ACC selects += (dx) or = (gsel).
template <int R, bool ACC>
void efd_rows_permute(const float* e_j, int64_t half, const uint8_t* aj, const float* gj, float* const* out,
                      int n, int64_t len) {
  for (int l = 0; l < n; ++l) {
    alignas(32) float buf[8 * R] = {};
    std::memcpy(buf, e_j + l * half, size_t(half) * sizeof(float));
    __m256 T[R];
    for (int r = 0; r < R; ++r) T[r] = _mm256_load_ps(buf + 8 * r);
    float* o = out[l];
    int64_t b = 0;
    for (; b + 8 <= len; b += 8) {
      const __m256 ev = lookup8<R>(T, compact_index8(load_addresses(aj + b), l));
      const __m256 term = _mm256_mul_ps(ev, _mm256_loadu_ps(gj + b));
      _mm256_storeu_ps(o + b, ACC ? _mm256_add_ps(_mm256_loadu_ps(o + b), term) : term);
    }
    for (; b < len; ++b) {
      const float term = buf[compact_index(aj[b], l)] * gj[b];
      o[b] = ACC ? o[b] + term : term;
    }
  }
}

// The same with a gather from memory, for n = 8 (16 registers would not stay in registers).
template <bool ACC>
void efd_rows_gather(const float* e_j, int64_t half, const uint8_t* aj, const float* gj, float* const* out,
                     int n, int64_t len) {
  for (int l = 0; l < n; ++l) {
    const float* row = e_j + l * half;
    float* o = out[l];
    int64_t b = 0;
    for (; b + 8 <= len; b += 8) {
      const __m256 ev = _mm256_i32gather_ps(row, compact_index8(load_addresses(aj + b), l), 4);
      const __m256 term = _mm256_mul_ps(ev, _mm256_loadu_ps(gj + b));
      _mm256_storeu_ps(o + b, ACC ? _mm256_add_ps(_mm256_loadu_ps(o + b), term) : term);
    }
    for (; b < len; ++b) {
      const float term = row[compact_index(aj[b], l)] * gj[b];
      o[b] = ACC ? o[b] + term : term;
    }
  }
}

template <bool ACC>
void efd_rows(const float* e_j, int64_t half, const uint8_t* aj, const float* gj, float* const* out, int n,
              int64_t len) {
  switch (n) {
    case 1: case 2: case 3: case 4: return efd_rows_permute<1, ACC>(e_j, half, aj, gj, out, n, len);
    case 5: return efd_rows_permute<2, ACC>(e_j, half, aj, gj, out, n, len);
    case 6: return efd_rows_permute<4, ACC>(e_j, half, aj, gj, out, n, len);
    case 7: return efd_rows_permute<8, ACC>(e_j, half, aj, gj, out, n, len);
    default: return efd_rows_gather<ACC>(e_j, half, aj, gj, out, n, len);
  }
}

// ea[a*8 + l] = e_j[l*half + c(a, l)] for every address a (lanes l >= n zero). Eight
// addresses a0..a0+7 at a time: for l >= 3 their compact indices are 8 consecutive ones, for
// l < 3 they are 4 consecutive ones, each twice (bit l removed); then one 8x8 transpose.
inline void address_major(const float* e_j, int64_t half, int n, float* ea) {
  const int size = 1 << n;
  if (n < 3) {
    for (int a = 0; a < size; ++a)
      for (int l = 0; l < 8; ++l) ea[a * 8 + l] = l < n ? e_j[l * half + compact_index(a, l)] : 0.0f;
    return;
  }
  const __m256i first4 = _mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0);
  __m256i dup[3];
  for (int l = 0; l < 3; ++l)
    dup[l] = _mm256_setr_epi32(compact_index(0, l), compact_index(1, l), compact_index(2, l), compact_index(3, l),
                               compact_index(4, l), compact_index(5, l), compact_index(6, l), compact_index(7, l));
  __m256 v[8], c[8];
  for (int a0 = 0; a0 < size; a0 += 8) {
    for (int l = 0; l < 8; ++l) {
      if (l >= n) {
        v[l] = _mm256_setzero_ps();
      } else if (l >= 3) {
        v[l] = _mm256_loadu_ps(e_j + l * half + compact_index(a0, l));
      } else {
        const __m256 four = _mm256_maskload_ps(e_j + l * half + compact_index(a0, l), first4);
        v[l] = _mm256_permutevar8x32_ps(four, dup[l]);
      }
    }
    transpose8(v, c);
    for (int s = 0; s < 8; ++s) _mm256_store_ps(ea + (a0 + s) * 8, c[s]);
  }
}

// The input gradient of one LUT over a span, address-major: the LUT's EFD gradients are first
// laid out as ea[a*8 + l] = E[j, l, a] (one 8-float row per address, lanes >= n zero), so
// each sample needs one aligned load for all its inputs; eight samples' rows are transposed
// into one vector per input bit and added to that input's row. Fewer operations per term
// than a table lookup per input bit (index arithmetic, permutes and blends, or a gather).
#if defined(__AVX512F__) && defined(__AVX512BW__)
// AVX-512, n <= 6: EfdRows16 (lut_simd.h), 16 samples a step, one read-modify-write per row.
template <int N>
void dx_span_avx512(const float* e_j, int64_t half, const uint8_t* aj, const float* gj, float* const* drows,
                    int64_t len) {
  const EfdRows16<N> rows(e_j, half);
  int64_t b = 0;
  for (; b + 16 <= len; b += 16) rows.add16(aj + b, gj + b, drows, b);
  for (; b < len; ++b)
    for (int l = 0; l < N; ++l) drows[l][b] += e_j[l * half + compact_index(aj[b], l)] * gj[b];
}
#endif

template <>
void dx_span<float, uint8_t>(const float* e_j, int64_t half, const uint8_t* aj, const float* gj, float* const* drows,
                             int n, int64_t len) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if (with_fan_in(n, [&]<int N>() { dx_span_avx512<N>(e_j, half, aj, gj, drows, len); })) return;
#endif
  alignas(32) float ea[256 * 8];
  address_major(e_j, half, n, ea);
  int64_t b = 0;
  __m256 r[8], c[8];
  for (; b + 8 <= len; b += 8) {
    for (int s = 0; s < 8; ++s) r[s] = _mm256_load_ps(ea + 8 * aj[b + s]);
    transpose8(r, c);
    const __m256 gv = _mm256_loadu_ps(gj + b);
    for (int l = 0; l < n; ++l) {
      float* d = drows[l] + b;
      _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), _mm256_mul_ps(c[l], gv)));
    }
  }
  for (; b < len; ++b)
    for (int l = 0; l < n; ++l) drows[l][b] += ea[8 * aj[b] + l] * gj[b];
}

template <>
void gsel_span<float, uint8_t>(const float* e_j, int64_t half, const uint8_t* aj, const float* gj,
                               float* const* orows, int n, int64_t len) {
  efd_rows<false>(e_j, half, aj, gj, orows, n, len);
}
#endif

// ------------------------------------------------------------------------- LUT forward

// addr[j, b] = sum_l [x[map[j, l], b] != 0] << l;  y[j, b] = [luts[j, addr[j, b]] > 0].
// Parallel over LUTs, each over the whole batch (long rows prefetch best).
template <typename scalar_t, typename addr_t>
void lut_forward_impl(const scalar_t* x, const int64_t* map, const scalar_t* luts, scalar_t* y,
                      addr_t* addr, int64_t out, int64_t n, int64_t batch) {
  const int64_t size = int64_t(1) << n;
  at::parallel_for(0, out, 16, [&](int64_t j0, int64_t j1) {
    const scalar_t* rows[kMaxFanIn];
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t l = 0; l < n; ++l) rows[l] = x + map[j * n + l] * batch;
      forward_span<scalar_t, addr_t>(rows, int(n), luts + j * size, y + j * batch, addr + j * batch, batch);
    }
  });
}

// ------------------------------------------------------------------------- LUT backward

// dx[map[j, l], b] = sum over (j, l) reading that row, in increasing j*n + l (the order of
// the reference's CSR product), of E[j, l, c(addr[j, b], l)] * g[j / group, b] (group > 1:
// the last layer, whose LUTs share their group's output gradient, read without broadcasting
// it).  Parallel over batch tiles: each task owns dx[:, tile] and needs no atomics.
template <typename scalar_t, typename addr_t>
void lut_dx_impl(const scalar_t* e, const addr_t* addr, const scalar_t* g, const int64_t* map,
                 scalar_t* dx, int64_t in, int64_t out, int64_t n, int64_t batch, int64_t forced,
                 int64_t group) {
  const int64_t tile = batch_tile(batch, forced);
  const int64_t ntiles = (batch + tile - 1) / tile;
  const int64_t half = int64_t(1) << (n - 1);
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    scalar_t* drows[kMaxFanIn];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * tile, len = std::min(tile, batch - b0);
      for (int64_t i = 0; i < in; ++i) std::fill(dx + i * batch + b0, dx + i * batch + b0 + len, scalar_t(0));
      for (int64_t j = 0; j < out; ++j) {
        for (int64_t l = 0; l < n; ++l) drows[l] = dx + map[j * n + l] * batch + b0;
        dx_span<scalar_t, addr_t>(e + j * n * half, half, addr + j * batch + b0, g + (j / group) * batch + b0, drows,
                                  int(n), len);
      }
    }
  });
}

// The blocked layout of blocked_kernels.cpp: dx[c, i, :] = sum over (j, l) with map[j*n + l] = i, in increasing j*n + l, of
// E[j, l, c(addr[c, j, s], l)] * g[c, j / group, s], for one block c (ac, gc: its addresses
// and output gradient) into its region (in rows of kBlockSamples).
template <typename scalar_t>
void blocked_dx_block(const scalar_t* e, const uint8_t* ac, const scalar_t* gc, const int64_t* map, scalar_t* region,
                      int64_t in, int64_t out, int64_t n, int64_t group) {
  const int64_t half = int64_t(1) << (n - 1);
  scalar_t* drows[kMaxFanIn];
  std::fill(region, region + in * kBlockSamples, scalar_t(0));
  for (int64_t j = 0; j < out; ++j) {
    for (int64_t l = 0; l < n; ++l) drows[l] = region + map[j * n + l] * kBlockSamples;
    dx_span<scalar_t, uint8_t>(e + j * n * half, half, ac + j * kBlockSamples, gc + (j / group) * kBlockSamples, drows,
                               int(n), kBlockSamples);
  }
}

// Every block of dx. Parallel over blocks (each task owns its blocks' regions: no atomics,
// the same sums whatever the thread count).
template <typename scalar_t>
void blocked_dx_impl(const scalar_t* e, const uint8_t* addr, const scalar_t* g, const int64_t* map, scalar_t* dx,
                     int64_t in, int64_t out, int64_t n, int64_t nb, int64_t grows, int64_t group) {
  at::parallel_for(0, nb, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      blocked_dx_block(e, addr + c * out * kBlockSamples, g + c * grows * kBlockSamples, map,
                       dx + c * in * kBlockSamples, in, out, n, group);
  });
}

// acc[b] += max(0, 1 - |col[b] - th| / w) * g[b]: one threshold's step of the thermometer's
// backward, rounded as the reference's in-place chain rounds it.
template <typename scalar_t>
inline void thermometer_accumulate(const scalar_t* col, scalar_t th, scalar_t w, const scalar_t* g, scalar_t* acc,
                                   int64_t len) {
  for (int64_t b = 0; b < len; ++b) {
    scalar_t tri = scalar_t(1) - std::fabs(col[b] - th) / w;
    tri = tri < scalar_t(0) ? scalar_t(0) : tri;  // NaN stays NaN, as clamp_ keeps it
    acc[b] += tri * g[b];
  }
}

// dx[b0 + s, f] = (sum_t max(0, 1 - |x[b0 + s, f] - theta[f, t]| / w[f]) * g[f*T + t, s]) / w[f]
// for s < len and every feature f, g one block (rows f*T + t, kBlockSamples each), each step
// rounded as the reference's in-place chain rounds it, summed in increasing t
// (thermometer_backward below).
template <typename scalar_t>
void thermometer_backward_block(const scalar_t* x, const scalar_t* theta, const scalar_t* width, const scalar_t* g,
                                scalar_t* dx, int64_t b0, int64_t len, int64_t features, int64_t nthr) {
  scalar_t col[kBlockSamples], acc[kBlockSamples];
  for (int64_t f = 0; f < features; ++f) {
    const scalar_t w = width[f];
    for (int64_t s = 0; s < kBlockSamples; ++s) {
      col[s] = s < len ? x[(b0 + s) * features + f] : scalar_t(0);
      acc[s] = scalar_t(0);
    }
    for (int64_t t = 0; t < nthr; ++t) {
      const scalar_t th = theta[f * nthr + t];
      const scalar_t* gt = g + (f * nthr + t) * kBlockSamples;
      thermometer_accumulate(col, th, w, gt, acc, kBlockSamples);
    }
    for (int64_t s = 0; s < len; ++s) dx[(b0 + s) * features + f] = acc[s] / w;
  }
}

// The first layer's input gradient straight into the thermometer's backward, block by block:
// each block's region (the thermometer's F*T bit rows) is formed in a buffer of the task's
// own, kept from call to call, and read back while it is still in L2; the (blocks, F*T, S)
// tensor is never formed. dq as thermometer_backward gives it from the whole dx, bit for bit.
template <typename scalar_t>
void blocked_dx_thermometer_impl(const scalar_t* e, const uint8_t* addr, const scalar_t* g, const int64_t* map,
                                 const scalar_t* x, const scalar_t* theta, const scalar_t* width, scalar_t* dq,
                                 int64_t out, int64_t n, int64_t grows, int64_t group, int64_t batch,
                                 int64_t features, int64_t nthr) {
  const int64_t in = features * nthr, nb = (batch + kBlockSamples - 1) / kBlockSamples;
  at::parallel_for(0, nb, 1, [&](int64_t c0, int64_t c1) {
    thread_local std::vector<scalar_t> buffer;  // 64 bytes more, so the rows can start on a cache line
    const size_t bytes = size_t(in * kBlockSamples) * sizeof(scalar_t);
    if (buffer.size() * sizeof(scalar_t) < bytes + 64) buffer.resize(bytes / sizeof(scalar_t) + 64);
    void* start = buffer.data();
    size_t room = buffer.size() * sizeof(scalar_t);
    scalar_t* region = static_cast<scalar_t*>(std::align(64, bytes, start, room));  // no access splits a line
    for (int64_t c = c0; c < c1; ++c) {
      blocked_dx_block(e, addr + c * out * kBlockSamples, g + c * grows * kBlockSamples, map, region, in, out, n,
                       group);
      thermometer_backward_block(x, theta, width, region, dq, c * kBlockSamples,
                                 std::min(kBlockSamples, batch - c * kBlockSamples), features, nthr);
    }
  });
}

// gsel[j*n + l, b] = E[j, l, c(addr[j, b], l)] * g[j, b]: the EFD gradient of every selected
// input, which the learnable mapping's products consume. Parallel over LUTs.
template <typename scalar_t, typename addr_t>
void lut_gsel_impl(const scalar_t* e, const addr_t* addr, const scalar_t* g, scalar_t* gsel,
                   int64_t out, int64_t n, int64_t batch) {
  const int64_t half = int64_t(1) << (n - 1);
  at::parallel_for(0, out, 16, [&](int64_t j0, int64_t j1) {
    scalar_t* orows[kMaxFanIn];
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t l = 0; l < n; ++l) orows[l] = gsel + (j * n + l) * batch;
      gsel_span<scalar_t, addr_t>(e + j * n * half, half, addr + j * batch, g + j * batch, orows, int(n), batch);
    }
  });
}

// dluts[j, a] = sum of g[j / group, b] over the samples b with addr[j, b] = a (straight-through).
// Four interleaved partial histograms break the store-to-load chains of a skewed address
// distribution; they are combined in a fixed order, so the result is deterministic.
template <typename scalar_t, typename addr_t>
void lut_dluts_impl(const addr_t* addr, const scalar_t* g, scalar_t* dluts, int64_t out, int64_t n,
                    int64_t batch, int64_t group) {
  const int64_t size = int64_t(1) << n;
  at::parallel_for(0, out, 16, [&](int64_t j0, int64_t j1) {
    std::vector<scalar_t> part(4 * size);
    for (int64_t j = j0; j < j1; ++j) {
      std::fill(part.begin(), part.end(), scalar_t(0));
      const addr_t* aj = addr + j * batch;
      const scalar_t* gj = g + (j / group) * batch;
      int64_t b = 0;
      for (; b + 4 <= batch; b += 4)
        for (int64_t k = 0; k < 4; ++k) part[k * size + aj[b + k]] += gj[b + k];
      for (; b < batch; ++b) part[aj[b]] += gj[b];
      scalar_t* dj = dluts + j * size;
      for (int64_t a = 0; a < size; ++a)
        dj[a] = (part[a] + part[size + a]) + (part[2 * size + a] + part[3 * size + a]);
    }
  });
}

// ------------------------------------------------------------------------- thermometer

// bits[f*T + t, b] = [x[b, f] > theta[f, t]]. Parallel over features.
template <typename scalar_t>
void thermometer_forward_impl(const scalar_t* x, const scalar_t* theta, scalar_t* bits, int64_t batch,
                              int64_t features, int64_t nthr) {
  at::parallel_for(0, features, 1, [&](int64_t f0, int64_t f1) {
    std::vector<scalar_t> col(batch);
    for (int64_t f = f0; f < f1; ++f) {
      for (int64_t b = 0; b < batch; ++b) col[b] = x[b * features + f];
      for (int64_t t = 0; t < nthr; ++t) {
        const scalar_t th = theta[f * nthr + t];
        scalar_t* o = bits + (f * nthr + t) * batch;
        for (int64_t b = 0; b < batch; ++b) o[b] = col[b] > th ? scalar_t(1) : scalar_t(0);
      }
    }
  });
}

// dx[b, f] = (sum_t max(0, 1 - |x[b, f] - theta[f, t]| / w[f]) * g[f*T + t, b]) / w[f], each
// step rounded as the reference's in-place chain rounds it, summed in increasing t.
template <typename scalar_t>
void thermometer_backward_impl(const scalar_t* x, const scalar_t* theta, const scalar_t* width,
                               const scalar_t* g, scalar_t* dx, int64_t batch, int64_t features,
                               int64_t nthr) {
  at::parallel_for(0, features, 1, [&](int64_t f0, int64_t f1) {
    std::vector<scalar_t> col(batch), acc(batch);
    for (int64_t f = f0; f < f1; ++f) {
      const scalar_t w = width[f];
      for (int64_t b = 0; b < batch; ++b) col[b] = x[b * features + f];
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      for (int64_t t = 0; t < nthr; ++t) {
        const scalar_t th = theta[f * nthr + t];
        const scalar_t* gt = g + (f * nthr + t) * batch;
        thermometer_accumulate(col.data(), th, w, gt, acc.data(), batch);
      }
      for (int64_t b = 0; b < batch; ++b) dx[b * features + f] = acc[b] / w;
    }
  });
}

// ------------------------------------------------------------------------- group sum

// counts[b, c] = sum_{m < k} rows[c*k + m, b], summed in increasing m: the group popcount
// of the LUT path's rows, written straight into the (batch, C) layout the block uses.
template <typename scalar_t>
void group_sum_forward_impl(const scalar_t* rows, scalar_t* counts, int64_t groups, int64_t k, int64_t batch) {
  at::parallel_for(0, groups, 1, [&](int64_t c0, int64_t c1) {
    std::vector<scalar_t> acc(batch);
    for (int64_t c = c0; c < c1; ++c) {
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      for (int64_t m = 0; m < k; ++m) {
        const scalar_t* r = rows + (c * k + m) * batch;
        for (int64_t b = 0; b < batch; ++b) acc[b] += r[b];
      }
      for (int64_t b = 0; b < batch; ++b) counts[b * groups + c] = acc[b];
    }
  });
}

// drows[c*k + m, b] = g[b, c]: the sum's gradient, broadcast back into the rows layout.
template <typename scalar_t>
void group_sum_backward_impl(const scalar_t* g, scalar_t* drows, int64_t groups, int64_t k, int64_t batch) {
  at::parallel_for(0, groups, 1, [&](int64_t c0, int64_t c1) {
    std::vector<scalar_t> col(batch);
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t b = 0; b < batch; ++b) col[b] = g[b * groups + c];
      for (int64_t m = 0; m < k; ++m) std::copy(col.begin(), col.end(), drows + (c * k + m) * batch);
    }
  });
}

// ------------------------------------------------------------------------- op wrappers

// Calls f(scalar_t{}, addr_t{}) with the scalar type of `values` and the address type of `addr`.
template <typename F>
void dispatch_types(const at::Tensor& values, const at::Tensor& addr, F&& f) {
  const bool small = addr.scalar_type() == at::kByte;
  TORCH_CHECK(small || addr.scalar_type() == at::kInt, "quweit_lut: addresses must be uint8 or int32");
  dispatch_scalar(values, [&](auto s) { small ? f(s, uint8_t{}) : f(s, int32_t{}); });
}

void lut_forward(const at::Tensor& x, const at::Tensor& mapping, const at::Tensor& luts, at::Tensor& y,
                 at::Tensor& addr) {
  check_cpu_contiguous({&x, &mapping, &luts, &y, &addr}, "lut_forward");
  const int64_t out = luts.size(0), n = mapping.numel() / out;
  dispatch_types(x, addr, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using addr_t = decltype(a);
    lut_forward_impl<scalar_t, addr_t>(x.data_ptr<scalar_t>(), mapping.data_ptr<int64_t>(),
                                       luts.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                       static_cast<addr_t*>(addr.data_ptr()), out, n, x.size(1));
  });
}

void lut_dx(const at::Tensor& e, const at::Tensor& addr, const at::Tensor& g, const at::Tensor& mapping,
            at::Tensor& dx, int64_t tile, int64_t group) {
  check_cpu_contiguous({&e, &addr, &g, &mapping, &dx}, "lut_dx");
  TORCH_CHECK(group >= 1 && g.size(0) * group >= e.size(0), "quweit_lut.lut_dx: g has too few rows");
  dispatch_types(g, addr, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using addr_t = decltype(a);
    lut_dx_impl<scalar_t, addr_t>(e.data_ptr<scalar_t>(), static_cast<const addr_t*>(addr.data_ptr()),
                                  g.data_ptr<scalar_t>(), mapping.data_ptr<int64_t>(), dx.data_ptr<scalar_t>(),
                                  dx.size(0), e.size(0), e.size(1), g.size(1), tile, group);
  });
}

void blocked_dx(const at::Tensor& e, const at::Tensor& addr, const at::Tensor& g, const at::Tensor& mapping,
                at::Tensor& dx, int64_t group) {
  check_cpu_contiguous({&e, &addr, &g, &mapping, &dx}, "blocked_dx");
  const int64_t out = e.size(0), n = e.size(1), nb = addr.size(0);
  TORCH_CHECK(addr.scalar_type() == at::kByte && addr.size(1) == out && addr.size(2) == kBlockSamples && n <= kMaxFanIn && n >= 1 &&
                  mapping.numel() == out * n && g.size(0) == nb && dx.size(0) == nb && group >= 1 &&
                  g.size(1) * group >= out && dx.scalar_type() == g.scalar_type() &&
                  e.scalar_type() == g.scalar_type(),
              "quweit_lut.blocked_dx: bad shapes");
  dispatch_scalar(g, [&](auto s) {
    using scalar_t = decltype(s);
    blocked_dx_impl<scalar_t>(e.data_ptr<scalar_t>(), addr.data_ptr<uint8_t>(), g.data_ptr<scalar_t>(),
                              mapping.data_ptr<int64_t>(), dx.data_ptr<scalar_t>(), dx.size(1), out, n, nb, g.size(1),
                              group);
  });
}

void blocked_dx_thermometer(const at::Tensor& e, const at::Tensor& addr, const at::Tensor& g, const at::Tensor& mapping,
                            const at::Tensor& x, const at::Tensor& theta, const at::Tensor& width, at::Tensor& dq,
                            int64_t group) {
  check_cpu_contiguous({&e, &addr, &g, &mapping, &x, &theta, &width, &dq}, "blocked_dx_thermometer");
  const int64_t out = e.size(0), n = e.size(1), nb = addr.size(0), batch = x.size(0), features = x.size(1);
  TORCH_CHECK(addr.scalar_type() == at::kByte && addr.size(1) == out && addr.size(2) == kBlockSamples &&
                  n <= kMaxFanIn && n >= 1 && mapping.numel() == out * n && g.size(0) == nb && group >= 1 &&
                  g.size(1) * group >= out && nb == (batch + kBlockSamples - 1) / kBlockSamples &&
                  theta.size(0) == features && width.numel() == features && dq.sizes() == x.sizes() &&
                  e.scalar_type() == g.scalar_type() && x.scalar_type() == g.scalar_type() &&
                  theta.scalar_type() == g.scalar_type() && width.scalar_type() == g.scalar_type() &&
                  dq.scalar_type() == g.scalar_type(),
              "quweit_lut.blocked_dx_thermometer: bad shapes");
  const int64_t in = theta.numel(), *map = mapping.data_ptr<int64_t>();  // rows of the task's own buffer
  TORCH_CHECK(std::all_of(map, map + mapping.numel(), [in](int64_t i) { return i >= 0 && i < in; }),
              "quweit_lut.blocked_dx_thermometer: mapping out of the thermometer's rows");
  dispatch_scalar(g, [&](auto s) {
    using scalar_t = decltype(s);
    blocked_dx_thermometer_impl<scalar_t>(e.data_ptr<scalar_t>(), addr.data_ptr<uint8_t>(), g.data_ptr<scalar_t>(),
                                          mapping.data_ptr<int64_t>(), x.data_ptr<scalar_t>(),
                                          theta.data_ptr<scalar_t>(), width.data_ptr<scalar_t>(),
                                          dq.data_ptr<scalar_t>(), out, n, g.size(1), group, batch, features,
                                          theta.size(1));
  });
}

void lut_gsel(const at::Tensor& e, const at::Tensor& addr, const at::Tensor& g, at::Tensor& gsel) {
  check_cpu_contiguous({&e, &addr, &g, &gsel}, "lut_gsel");
  dispatch_types(g, addr, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using addr_t = decltype(a);
    lut_gsel_impl<scalar_t, addr_t>(e.data_ptr<scalar_t>(), static_cast<const addr_t*>(addr.data_ptr()),
                                    g.data_ptr<scalar_t>(), gsel.data_ptr<scalar_t>(), e.size(0), e.size(1),
                                    g.size(1));
  });
}

void lut_dluts(const at::Tensor& addr, const at::Tensor& g, at::Tensor& dluts, int64_t group) {
  check_cpu_contiguous({&addr, &g, &dluts}, "lut_dluts");
  TORCH_CHECK(group >= 1 && g.size(0) * group >= dluts.size(0), "quweit_lut.lut_dluts: g has too few rows");
  int64_t n = 0;
  while ((int64_t(1) << n) < dluts.size(1)) ++n;
  dispatch_types(g, addr, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using addr_t = decltype(a);
    lut_dluts_impl<scalar_t, addr_t>(static_cast<const addr_t*>(addr.data_ptr()), g.data_ptr<scalar_t>(),
                                     dluts.data_ptr<scalar_t>(), dluts.size(0), n, addr.size(1), group);
  });
}

void thermometer_forward(const at::Tensor& x, const at::Tensor& theta, at::Tensor& bits) {
  check_cpu_contiguous({&x, &theta, &bits}, "thermometer_forward");
  dispatch_scalar(x, [&](auto s) {
    using scalar_t = decltype(s);
    thermometer_forward_impl<scalar_t>(x.data_ptr<scalar_t>(), theta.data_ptr<scalar_t>(),
                                       bits.data_ptr<scalar_t>(), x.size(0), x.size(1), theta.size(1));
  });
}

void thermometer_backward(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& width,
                          const at::Tensor& g, at::Tensor& dx) {
  check_cpu_contiguous({&x, &theta, &width, &g, &dx}, "thermometer_backward");
  dispatch_scalar(x, [&](auto s) {
    using scalar_t = decltype(s);
    thermometer_backward_impl<scalar_t>(x.data_ptr<scalar_t>(), theta.data_ptr<scalar_t>(),
                                        width.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                        dx.data_ptr<scalar_t>(), x.size(0), x.size(1), theta.size(1));
  });
}

void group_sum_forward(const at::Tensor& rows, at::Tensor& counts) {
  check_cpu_contiguous({&rows, &counts}, "group_sum_forward");
  dispatch_scalar(rows, [&](auto s) {
    using scalar_t = decltype(s);
    const int64_t groups = counts.size(1);
    group_sum_forward_impl<scalar_t>(rows.data_ptr<scalar_t>(), counts.data_ptr<scalar_t>(), groups,
                                     rows.size(0) / groups, rows.size(1));
  });
}

void group_sum_backward(const at::Tensor& g, at::Tensor& drows) {
  check_cpu_contiguous({&g, &drows}, "group_sum_backward");
  dispatch_scalar(g, [&](auto s) {
    using scalar_t = decltype(s);
    const int64_t groups = g.size(1);
    group_sum_backward_impl<scalar_t>(g.data_ptr<scalar_t>(), drows.data_ptr<scalar_t>(), groups,
                                      drows.size(0) / groups, drows.size(1));
  });
}

}  // namespace

TORCH_LIBRARY(quweit_lut, m) {
  m.def("lut_forward(Tensor x, Tensor mapping, Tensor luts, Tensor(a!) y, Tensor(b!) addr) -> ()", &lut_forward);
  m.def("lut_dx(Tensor e, Tensor addr, Tensor g, Tensor mapping, Tensor(a!) dx, int tile=0, int group=1) -> ()",
        &lut_dx);
  m.def("blocked_dx(Tensor e, Tensor addr, Tensor g, Tensor mapping, Tensor(a!) dx, int group=1) -> ()", &blocked_dx);
  m.def("blocked_dx_thermometer(Tensor e, Tensor addr, Tensor g, Tensor mapping, Tensor x, Tensor theta, Tensor width, "
        "Tensor(a!) dq, int group=1) -> ()",
        &blocked_dx_thermometer);
  m.def("lut_gsel(Tensor e, Tensor addr, Tensor g, Tensor(a!) gsel) -> ()", &lut_gsel);
  m.def("lut_dluts(Tensor addr, Tensor g, Tensor(a!) dluts, int group=1) -> ()", &lut_dluts);
  m.def("thermometer_forward(Tensor x, Tensor theta, Tensor(a!) bits) -> ()", &thermometer_forward);
  m.def("thermometer_backward(Tensor x, Tensor theta, Tensor width, Tensor g, Tensor(a!) dx) -> ()",
        &thermometer_backward);
  m.def("group_sum_forward(Tensor rows, Tensor(a!) counts) -> ()", &group_sum_forward);
  m.def("group_sum_backward(Tensor g, Tensor(a!) drows) -> ()", &group_sum_backward);
}
