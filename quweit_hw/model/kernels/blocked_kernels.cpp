// The fused LUT-MLP block's backward in the *blocked* layout (quweit_hw.model.kernels.block).
//
// Blocked layout: a (rows, batch) tensor stored as (blocks, rows, kBlock), kBlock samples of
// one row contiguous, the batch padded to whole blocks (gradients 0, addresses 0 there). The
// input gradient of a layer adds E[j, l, c(addr)] * g into the rows of the LUTs' inputs; in
// the rows layout every LUT streams six random rows of the whole batch through the cache (an
// 8 MB target for the last layer at 1,024 samples: bound by L3 bandwidth, and tiles of those
// rows alias into the same cache sets, rows being 4 KB apart). In the blocked layout one block
// of every row is one contiguous region (in * kBlock * 4 bytes: 1-2 MB) that stays in L2
// while every LUT adds into it, and every other stream (addresses, gradients, the EFD tables)
// is read front to back. The layer's output gradient comes in blocked and its input gradient
// goes out blocked, so the layers hand it on without a transpose; the first layer's blocks go
// straight into the thermometer's backward, each while it is in L2 (blocked_dx_thermometer).
// The forward saves its addresses blocked, and only the group gradient is blocked on entry
// (columns_to_blocks, from the (batch, C) layout the block returns).
//
// Sums are those of lut_kernels.cpp, term for term and in the same order: dx sums in
// increasing j*n + l (blocked_dx and blocked_dx_thermometer, in lut_kernels.cpp beside lut_dx:
// the same spans), the table gradient in four interleaved partial histograms combined in a
// fixed order, the thermometer's chain as the reference rounds it. Built with
// -ffp-contract=off like the rest.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_args.h"
#include "lut_simd.h"

namespace {

constexpr int64_t kBlock = kBlockSamples;  // a multiple of the 16-float vectors


// blocked[c, r, s] = cols[c * kBlock + s, r], 0 past the batch: the block's (batch, C) output
// gradient blocked without first transposing it to rows. Parallel over blocks.
template <typename T>
void columns_to_blocks_impl(const T* cols, T* blocked, int64_t nrows, int64_t batch) {
  const int64_t nb = (batch + kBlock - 1) / kBlock;
  at::parallel_for(0, nb, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b0 = c * kBlock, len = std::min(kBlock, batch - b0);
      T* o = blocked + c * nrows * kBlock;
      for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t s = 0; s < len; ++s) o[r * kBlock + s] = cols[(b0 + s) * nrows + r];
        std::fill(o + r * kBlock + len, o + (r + 1) * kBlock, T(0));
      }
    }
  });
}

// dluts[j, a] = sum of g[c, j / group, s] over the samples with addr[c, j, s] = a, samples in
// increasing order into four partial histograms (sample b into partial b % 4, which breaks the
// store-to-load chains of a skewed address distribution), combined as (p0 + p1) + (p2 + p3).
// Parallel over LUTs, each over its blocks in turn (the next LUT's segments are the next
// cache lines of every block, so the strided walk stays in the prefetchers' reach).
template <typename scalar_t>
void blocked_dluts_impl(const uint8_t* addr, const scalar_t* g, scalar_t* dluts, int64_t out, int64_t n, int64_t nb,
                        int64_t batch, int64_t grows, int64_t group) {
  const int64_t size = int64_t(1) << n;
  at::parallel_for(0, out, 16, [&](int64_t j0, int64_t j1) {
    std::vector<scalar_t> part(4 * size);
    scalar_t* const p = part.data();
    // one base register per partial: each increment is a load, an add and a store at
    // [base + 4 * byte] (one shared base costs an add and a lea more: the loop is bound by its
    // instruction count, not by memory)
    scalar_t* const partial[4] = {p, p + size, p + 2 * size, p + 3 * size};
    for (int64_t j = j0; j < j1; ++j) {
      std::fill(part.begin(), part.end(), scalar_t(0));
      for (int64_t c = 0; c < nb; ++c) {
        const int64_t len = std::min(kBlock, batch - c * kBlock);
        const uint8_t* a = addr + (c * out + j) * kBlock;
        const scalar_t* gj = g + (c * grows + j / group) * kBlock;
        int64_t s = 0;
        for (; s + 8 <= len; s += 8) {  // eight addresses in one load, taken apart by shifts
          uint64_t w;
          std::memcpy(&w, a + s, 8);
          for (int k = 0; k < 8; ++k) partial[k & 3][(w >> (8 * k)) & 0xFF] += gj[s + k];
        }
        for (; s < len; ++s) partial[s & 3][a[s]] += gj[s];
      }
      for (int64_t a = 0; a < size; ++a) dluts[j * size + a] = (p[a] + p[size + a]) + (p[2 * size + a] + p[3 * size + a]);
    }
  });
}

// cols (N, R) -> blocked (ceil(N / kBlock), R, kBlock): float32/float64.
void columns_to_blocks(const at::Tensor& cols, at::Tensor& blocked) {
  check_cpu_contiguous({&cols, &blocked}, "columns_to_blocks");
  const int64_t batch = cols.size(0), nrows = cols.size(1);
  TORCH_CHECK(cols.dim() == 2 && blocked.scalar_type() == cols.scalar_type() && blocked.dim() == 3 &&
                  blocked.size(0) == (batch + kBlock - 1) / kBlock && blocked.size(1) == nrows &&
                  blocked.size(2) == kBlock,
              "quweit_lut.columns_to_blocks: bad shapes");
  dispatch_scalar(cols, [&](auto s) {
    using scalar_t = decltype(s);
    columns_to_blocks_impl<scalar_t>(cols.data_ptr<scalar_t>(), blocked.data_ptr<scalar_t>(), nrows, batch);
  });
}

void blocked_dluts(const at::Tensor& addr, const at::Tensor& g, at::Tensor& dluts, int64_t batch, int64_t group) {
  check_cpu_contiguous({&addr, &g, &dluts}, "blocked_dluts");
  int64_t n = 0;
  while ((int64_t(1) << n) < dluts.size(1)) ++n;
  const int64_t out = dluts.size(0), nb = addr.size(0);
  TORCH_CHECK(addr.scalar_type() == at::kByte && addr.size(1) == out && g.size(0) == nb && group >= 1 &&
                  g.size(1) * group >= out && (batch + kBlock - 1) / kBlock == nb &&
                  dluts.scalar_type() == g.scalar_type(),
              "quweit_lut.blocked_dluts: bad shapes");
  dispatch_scalar(g, [&](auto s) {
    using scalar_t = decltype(s);
    blocked_dluts_impl<scalar_t>(addr.data_ptr<uint8_t>(), g.data_ptr<scalar_t>(), dluts.data_ptr<scalar_t>(), out,
                                 n, nb, batch, g.size(1), group);
  });
}

int64_t block_samples() { return kBlock; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(quweit_lut, m) {
  m.def("block_samples() -> int", &block_samples);
  m.def("columns_to_blocks(Tensor cols, Tensor(a!) blocked) -> ()", &columns_to_blocks);
  m.def("blocked_dluts(Tensor addr, Tensor g, Tensor(a!) dluts, int batch, int group=1) -> ()", &blocked_dluts);
}
