"""Momentum SGD over every parameter in one C++ operator (momentum.cc), for training on CPU.

``nn.Momentum`` launches one ApplyMomentum per parameter, and its weight decay a Mul and an AddN per
decayed one: for MobileNetV2 ~260 small kernels per step, 5-6% of the CPU demo's step (BENCHMARKS.md
section 12).
:func:`momentum_apply_all` returns the single custom operator that does all of it, declared to
MindSpore as writing the weights and moments it is given (as ApplyMomentum is).
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from .depthwise import kernel_library

if TYPE_CHECKING:
    from mindspore import ops


@lru_cache(maxsize=None)
def momentum_apply_all(num_params: int) -> ops.Custom:
    """The operator ``op(lr, momentum, weight_decay[P], *grads, *weights, *moments) -> done`` for P parameters."""
    from mindspore import ops
    from mindspore.ops import signature as sig

    lib = kernel_library()
    p = int(num_params)
    signature = ((sig.make_sig("lr"), sig.make_sig("momentum"), sig.make_sig("weight_decay"))
                 + tuple(sig.make_sig(f"grad{i}") for i in range(p))
                 + tuple(sig.make_sig(f"weight{i}", sig.sig_rw.RW_WRITE) for i in range(p))
                 + tuple(sig.make_sig(f"moment{i}", sig.sig_rw.RW_WRITE) for i in range(p)))

    class MomentumApplyAll(ops.Custom):
        """The custom operator, declared as writing its weight and moment inputs in place."""

        __mindspore_signature__ = signature

        def __init__(self) -> None:
            super().__init__(f"{lib}:MomentumApplyAll", out_shape=lambda *shapes: shapes[0],
                             out_dtype=lambda *types: types[0], func_type="aot")
            self.add_prim_attr("side_effect_mem", True)

    return MomentumApplyAll()
