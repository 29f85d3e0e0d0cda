"""CPU kernels: the C++ depthwise 3x3 and training BatchNorm (+ ReLU6) custom operators, the fused inference
kernels, matrix-product pooling (ops.pooling), momentum over all parameters in one operator (ops.momentum)
and the oneDNN instruction-set choice (ops.cpu_isa)."""
from .batchnorm import swap_batchnorm  # noqa: F401
from .depthwise import (CHOICES, KernelBuildError, apply_depthwise_kernel, build_library,  # noqa: F401
                        kernel_in_use, resolve_kernel, swap_depthwise)

__all__ = ["CHOICES", "KernelBuildError", "apply_depthwise_kernel", "build_library", "kernel_in_use",
           "resolve_kernel", "swap_batchnorm", "swap_depthwise"]
