"""Training BatchNorm (+ ReLU6) for CPU on the project's C++ kernels (batchnorm.cc), as AOT custom ops.

On CPU, MindSpore 2.10's BatchNorm, ReLU6 and their gradients took ~40% of MobileNetV2's training
step. :func:`swap_batchnorm` replaces each ``nn.BatchNorm2d`` of a built network (and the ReLU6
right after it, which the kernel applies in the same pass) in place, keeping its four Parameters
(same names, values and optimizer state), so checkpoints are interchangeable with the native
layers. Training mode normalises with the batch statistics and updates the moving ones exactly
as ``nn.BatchNorm2d`` does (momentum, unbiased variance); eval mode uses the moving statistics.
Results agree with nn.BatchNorm2d + nn.ReLU6 to float rounding (tests/test_fast_batchnorm.py).
Built together with the depthwise kernel (ops.depthwise.kernel_library), and used where it is.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from .depthwise import kernel_library

if TYPE_CHECKING:
    from mindspore import nn


@lru_cache(maxsize=None)
def _cell_classes():
    """(AotBatchNorm, FusedReLU6) classes, built lazily so importing this module needs no MindSpore."""
    import numpy as np
    from mindspore import Tensor, nn, ops
    from mindspore.ops import signature as sig

    lib = kernel_library()

    class BnForward(ops.Custom):
        """The forward custom op, declared to MindSpore as writing its inputs 4 and 5 (the moving statistics).

        Undeclared, graph mode handed the kernel a copy where the EMA update also read them
        (tests/test_fast_batchnorm.py).
        """

        __mindspore_signature__ = (sig.make_sig("x"), sig.make_sig("gamma"), sig.make_sig("beta"), sig.make_sig("eps"),
                                   sig.make_sig("moving_mean", sig.sig_rw.RW_WRITE),
                                   sig.make_sig("moving_var", sig.sig_rw.RW_WRITE), sig.make_sig("batch_weight"))

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.add_prim_attr("side_effect_mem", True)

    class AotBatchNormOp(nn.Cell):
        """(y, batch mean, batch biased var) = BN(x) (+ ReLU6); bprop calls the C++ backward."""

        def __init__(self, relu6: bool) -> None:
            super().__init__()
            act = "Relu6" if relu6 else ""
            # the forward also updates the moving statistics (its inputs 4 and 5) in place
            self.fwd = BnForward(f"{lib}:BnTrainForward{act}",
                                 out_shape=lambda xs, gs, bs, es, mms, mvs, ws: (xs, gs, gs),
                                 out_dtype=lambda xt, gt, bt, et, mmt, mvt, wt: (xt, xt, xt), func_type="aot")
            self.bwd = ops.Custom(f"{lib}:BnTrainBackward{act}",
                                  out_shape=lambda xs, gs, ms_, vs, ys, ds, es: (xs, gs, gs),
                                  out_dtype=lambda xt, gt, mt, vt, yt, dt, et: (xt, xt, xt), func_type="aot")

        def construct(self, x, gamma, beta, eps, moving_mean, moving_var, batch_weight):
            return self.fwd(x, gamma, beta, eps, moving_mean, moving_var, batch_weight)

        def bprop(self, x, gamma, beta, eps, moving_mean, moving_var, batch_weight, out, dout):
            dx, dgamma, dbeta = self.bwd(x, gamma, out[1], out[2], out[0], dout[0], eps)
            return (dx, dgamma, dbeta, ops.zeros_like(eps), ops.zeros_like(moving_mean), ops.zeros_like(moving_var),
                    ops.zeros_like(batch_weight))

    shared_ops = {}

    class AotBatchNorm(nn.Cell):
        """nn.BatchNorm2d (+ the ReLU6 after it) on the C++ kernels; same Parameters and update rule."""

        def __init__(self, bn: nn.BatchNorm2d, relu6: bool) -> None:
            super().__init__()
            if relu6 not in shared_ops:
                shared_ops[relu6] = AotBatchNormOp(relu6)
            self.op = shared_ops[relu6]
            # the replaced layer's Parameters, in its order: same names, values, optimizer slots, checkpoints
            self.moving_mean, self.moving_variance = bn.moving_mean, bn.moving_variance
            self.gamma, self.beta = bn.gamma, bn.beta
            self.eps, self.relu6 = float(bn.eps), bool(relu6)
            self.eps_t = Tensor(np.array([bn.eps], np.float32))
            # nn.BatchNorm2d(momentum=0.9) stores 1 - 0.9: the weight of the batch statistics
            self.batch_weight_t = Tensor(np.array([bn.momentum], np.float32))

        def construct(self, x):
            if self.training:
                # the kernel updates the moving statistics by nn.BatchNorm2d's rule (batchnorm.cc)
                return self.op(x, self.gamma, self.beta, self.eps_t, self.moving_mean, self.moving_variance,
                               self.batch_weight_t)[0]
            scale = self.gamma / ops.sqrt(self.moving_variance + self.eps)
            shift = self.beta - self.moving_mean * scale
            y = x * scale.reshape((1, -1, 1, 1)) + shift.reshape((1, -1, 1, 1))
            if self.relu6:
                y = ops.clamp(y, 0.0, 6.0)
            return y

    class FusedReLU6(nn.ReLU6):
        """Stands where a ReLU6 was whose clamp the AotBatchNorm before it now applies: the identity.

        Still an nn.ReLU6 for code that reads the network's structure (models.fold's BN folding).
        """

        def construct(self, x):
            return x

    return AotBatchNorm, FusedReLU6


def swap_batchnorm(net: nn.Cell) -> int:
    """Replace every nn.BatchNorm2d in ``net``'s SequentialCells (fusing a following ReLU6) in place; the count."""
    from mindspore import nn

    aot_bn, fused_relu6 = _cell_classes()
    swapped = 0
    for _, parent in list(net.cells_and_names()):
        if not isinstance(parent, nn.SequentialCell):
            continue
        n = len(parent)
        for k in range(n):
            bn = parent[k]
            # use_batch_statistics None = batch statistics when training, moving ones in eval (ours)
            if type(bn) is not nn.BatchNorm2d or getattr(bn, "use_batch_statistics", None) is not None:
                continue
            relu6 = k + 1 < n and type(parent[k + 1]) is nn.ReLU6
            parent[k] = aot_bn(bn, relu6)
            if relu6:
                parent[k + 1] = fused_relu6()
            swapped += 1
    return swapped
