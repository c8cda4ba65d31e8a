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
#include <initializer_list>
#include <vector>

namespace {

// A batch tile is sized so the rows it touches (features x tile values) stay within about
// this many bytes, i.e. in the L2 cache, while a task walks over all LUTs.
constexpr int64_t kTileBytes = 192 * 1024;
constexpr int64_t kMaxTile = 512;

int64_t batch_tile(int64_t rows, int64_t elem_size, int64_t batch) {
  int64_t tile = kTileBytes / std::max<int64_t>(1, rows * elem_size);
  tile = std::max<int64_t>(16, std::min(kMaxTile, tile)) & ~int64_t(15);
  return std::max<int64_t>(1, std::min(tile, batch));
}

// Position of address a in the compact EFD table of input bit l: bit l removed (the EFD
// gradient w.r.t. bit l does not depend on bit l itself, so only 2**(n-1) values exist).
inline int32_t compact_index(int32_t a, int32_t l) {
  return (a & ((1 << l) - 1)) | ((a >> (l + 1)) << l);
}

// ------------------------------------------------------------------------- LUT forward

// addr[j, b] = sum_l [x[map[j, l], b] != 0] << l;  y[j, b] = [luts[j, addr[j, b]] > 0].
// Parallel over batch tiles: a tile's input rows stay in L2 while all LUTs read them.
template <typename scalar_t, typename addr_t>
void lut_forward_impl(const scalar_t* x, const int64_t* map, const scalar_t* luts, scalar_t* y,
                      addr_t* addr, int64_t in, int64_t out, int64_t n, int64_t batch) {
  const int64_t tile = batch_tile(in, sizeof(scalar_t), batch);
  const int64_t ntiles = (batch + tile - 1) / tile;
  const int64_t size = int64_t(1) << n;
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    int32_t acc[kMaxTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * tile, len = std::min(tile, batch - b0);
      for (int64_t j = 0; j < out; ++j) {
        std::fill(acc, acc + len, 0);
        for (int64_t l = 0; l < n; ++l) {
          const scalar_t* xl = x + map[j * n + l] * batch + b0;
          for (int64_t b = 0; b < len; ++b) acc[b] |= int32_t(xl[b] != scalar_t(0)) << l;
        }
        const scalar_t* table = luts + j * size;
        addr_t* aj = addr + j * batch + b0;
        scalar_t* yj = y + j * batch + b0;
        for (int64_t b = 0; b < len; ++b) {
          aj[b] = static_cast<addr_t>(acc[b]);
          yj[b] = table[acc[b]] > scalar_t(0) ? scalar_t(1) : scalar_t(0);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------- LUT backward

// dx[map[j, l], b] = sum over (j, l) reading that row, in increasing j*n + l (the order of
// the reference's CSR product), of E[j, l, c(addr[j, b], l)] * g[j, b].  Parallel over
// batch tiles: each task owns dx[:, tile] and needs no atomics.
template <typename scalar_t, typename addr_t>
void lut_dx_impl(const scalar_t* e, const addr_t* addr, const scalar_t* g, const int64_t* map,
                 scalar_t* dx, int64_t in, int64_t out, int64_t n, int64_t batch) {
  const int64_t tile = batch_tile(in, sizeof(scalar_t), batch);
  const int64_t ntiles = (batch + tile - 1) / tile;
  const int64_t half = int64_t(1) << (n - 1);
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * tile, len = std::min(tile, batch - b0);
      for (int64_t i = 0; i < in; ++i) std::fill(dx + i * batch + b0, dx + i * batch + b0 + len, scalar_t(0));
      for (int64_t j = 0; j < out; ++j) {
        const addr_t* aj = addr + j * batch + b0;
        const scalar_t* gj = g + j * batch + b0;
        for (int64_t l = 0; l < n; ++l) {
          const scalar_t* ejl = e + (j * n + l) * half;
          scalar_t* d = dx + map[j * n + l] * batch + b0;
          const int32_t li = static_cast<int32_t>(l);
          for (int64_t b = 0; b < len; ++b) d[b] += ejl[compact_index(aj[b], li)] * gj[b];
        }
      }
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
    for (int64_t j = j0; j < j1; ++j) {
      const addr_t* aj = addr + j * batch;
      const scalar_t* gj = g + j * batch;
      for (int64_t l = 0; l < n; ++l) {
        const scalar_t* ejl = e + (j * n + l) * half;
        scalar_t* o = gsel + (j * n + l) * batch;
        const int32_t li = static_cast<int32_t>(l);
        for (int64_t b = 0; b < batch; ++b) o[b] = ejl[compact_index(aj[b], li)] * gj[b];
      }
    }
  });
}

// dluts[j, a] = sum of g[j, b] over the samples b with addr[j, b] = a (straight-through).
// Four interleaved partial histograms break the store-to-load chains of a skewed address
// distribution; they are combined in a fixed order, so the result is deterministic.
template <typename scalar_t, typename addr_t>
void lut_dluts_impl(const addr_t* addr, const scalar_t* g, scalar_t* dluts, int64_t out, int64_t n,
                    int64_t batch) {
  const int64_t size = int64_t(1) << n;
  at::parallel_for(0, out, 16, [&](int64_t j0, int64_t j1) {
    std::vector<scalar_t> part(4 * size);
    for (int64_t j = j0; j < j1; ++j) {
      std::fill(part.begin(), part.end(), scalar_t(0));
      const addr_t* aj = addr + j * batch;
      const scalar_t* gj = g + j * batch;
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
        for (int64_t b = 0; b < batch; ++b) {
          scalar_t tri = scalar_t(1) - std::fabs(col[b] - th) / w;
          tri = tri < scalar_t(0) ? scalar_t(0) : tri;  // NaN stays NaN, as clamp_ keeps it
          acc[b] += tri * gt[b];
        }
      }
      for (int64_t b = 0; b < batch; ++b) dx[b * features + f] = acc[b] / w;
    }
  });
}

// ------------------------------------------------------------------------- op wrappers

// Calls f(scalar_t{}) with the scalar type of `values`, float32 or float64.
template <typename F>
void dispatch_scalar(const at::Tensor& values, F&& f) {
  if (values.scalar_type() == at::kFloat) {
    f(float{});
  } else {
    TORCH_CHECK(values.scalar_type() == at::kDouble, "quweit_lut: values must be float32 or float64");
    f(double{});
  }
}

void check_cpu_contiguous(std::initializer_list<const at::Tensor*> tensors, const char* op) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), "quweit_lut.", op, ": every tensor must be on the CPU");
    TORCH_CHECK(t->is_contiguous(), "quweit_lut.", op, ": every tensor must be contiguous");
  }
}

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
                                       static_cast<addr_t*>(addr.data_ptr()), x.size(0), out, n, x.size(1));
  });
}

void lut_dx(const at::Tensor& e, const at::Tensor& addr, const at::Tensor& g, const at::Tensor& mapping,
            at::Tensor& dx) {
  check_cpu_contiguous({&e, &addr, &g, &mapping, &dx}, "lut_dx");
  dispatch_types(g, addr, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using addr_t = decltype(a);
    lut_dx_impl<scalar_t, addr_t>(e.data_ptr<scalar_t>(), static_cast<const addr_t*>(addr.data_ptr()),
                                  g.data_ptr<scalar_t>(), mapping.data_ptr<int64_t>(), dx.data_ptr<scalar_t>(),
                                  dx.size(0), e.size(0), e.size(1), g.size(1));
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

void lut_dluts(const at::Tensor& addr, const at::Tensor& g, at::Tensor& dluts) {
  check_cpu_contiguous({&addr, &g, &dluts}, "lut_dluts");
  int64_t n = 0;
  while ((int64_t(1) << n) < dluts.size(1)) ++n;
  dispatch_types(g, addr, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using addr_t = decltype(a);
    lut_dluts_impl<scalar_t, addr_t>(static_cast<const addr_t*>(addr.data_ptr()), g.data_ptr<scalar_t>(),
                                     dluts.data_ptr<scalar_t>(), dluts.size(0), n, g.size(1));
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

}  // namespace

TORCH_LIBRARY(quweit_lut, m) {
  m.def("lut_forward(Tensor x, Tensor mapping, Tensor luts, Tensor(a!) y, Tensor(b!) addr) -> ()", &lut_forward);
  m.def("lut_dx(Tensor e, Tensor addr, Tensor g, Tensor mapping, Tensor(a!) dx) -> ()", &lut_dx);
  m.def("lut_gsel(Tensor e, Tensor addr, Tensor g, Tensor(a!) gsel) -> ()", &lut_gsel);
  m.def("lut_dluts(Tensor addr, Tensor g, Tensor(a!) dluts) -> ()", &lut_dluts);
  m.def("thermometer_forward(Tensor x, Tensor theta, Tensor(a!) bits) -> ()", &thermometer_forward);
  m.def("thermometer_backward(Tensor x, Tensor theta, Tensor width, Tensor g, Tensor(a!) dx) -> ()",
        &thermometer_backward);
}
