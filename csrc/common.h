// Shared helpers for pyfast_gan's native kernels. Keep includes light: pulling in
// torch/extension.h costs minutes of compile time per file on a 2-core host.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

// Argument checks name the argument, as the Python side's ValueErrors do.
#define PFG_CHECK_ARG(cond, argname, ...) \
  TORCH_CHECK_VALUE(cond, argname, ": ", __VA_ARGS__)

#ifdef PYFAST_GAN_WITH_CUDA
#define PFG_BUILT_WITH_CUDA true
#else
#define PFG_BUILT_WITH_CUDA false
#endif
