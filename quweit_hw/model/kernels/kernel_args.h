// Argument checks and dtype dispatch shared by the kernel sources (lut_kernels.cpp,
// block_kernels.cpp, blocked_kernels.cpp), which are compiled into one library.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>

inline void check_cpu_contiguous(std::initializer_list<const at::Tensor*> tensors, const char* op) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), "quweit_lut.", op, ": every tensor must be on the CPU");
    TORCH_CHECK(t->is_contiguous(), "quweit_lut.", op, ": every tensor must be contiguous");
  }
}

// Calls f(scalar_t{}) with the scalar type of `values`: float32 or float64.
template <typename F>
void dispatch_scalar(const at::Tensor& values, F&& f) {
  if (values.scalar_type() == at::kFloat) {
    f(float{});
  } else {
    TORCH_CHECK(values.scalar_type() == at::kDouble, "quweit_lut: values must be float32 or float64");
    f(double{});
  }
}
