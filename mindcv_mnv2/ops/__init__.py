"""Custom operators: the C++ depthwise 3x3 kernel for CPU training and evaluation."""
from .depthwise import (CHOICES, KernelBuildError, apply_depthwise_kernel, build_library,  # noqa: F401
                        kernel_in_use, resolve_kernel, swap_depthwise)

__all__ = ["CHOICES", "KernelBuildError", "apply_depthwise_kernel", "build_library", "kernel_in_use",
           "resolve_kernel", "swap_depthwise"]
