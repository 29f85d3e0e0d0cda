"""Global average pooling as one matrix product, for training on CPU.

MindSpore 2.10's CPU ReduceMean over (H, W) and its gradient (Tile, then RealDiv) took 4.6 ms
for a forward + backward at the CPU demo's size (64 x 1280 x 2 x 2) and 19.5 ms at 1.0 @ 224
(32 x 1280 x 7 x 7); the same mean as ``(N*C, H*W) @ ones(H*W, 1) / (H*W)`` runs on oneDNN's
matrix product in 1.0 and 1.9 ms, gradient included (bench/bench_pooling.py; BENCHMARKS.md
section 12: in the whole training step only 1.0 @ 224 shows it, 2.4% faster). The result differs
from ReduceMean by float rounding only (products by 1/(H*W) summed in another order).

:func:`swap_pooling` puts it in place of the network's ``GlobalAvgPool`` wherever the C++ training
kernels are used (ops.apply_depthwise_kernel). It has no Parameters, so checkpoints are unchanged.
Only the training network is swapped: exports and the folded inference network keep their own
pooling (an exported Reshape to N*C rows would pin the batch size of a dynamic-batch ONNX file).
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mindspore import nn


@lru_cache(maxsize=None)
def _cell_class():
    """MatMulAvgPool, built lazily so importing this module needs no MindSpore."""
    from mindspore import nn, ops

    class MatMulAvgPool(nn.Cell):
        """(N, C, H, W) -> (N, C): each plane's mean as a product with a constant 1/(H*W) column."""

        def construct(self, x):
            n, c, h, w = x.shape
            weights = ops.fill(x.dtype, (h * w, 1), 1.0 / (h * w))
            return ops.matmul(x.reshape(n * c, h * w), weights).reshape(n, c)

    return MatMulAvgPool


def matmul_avg_pool() -> nn.Cell:
    """A new MatMulAvgPool cell."""
    return _cell_class()()


def swap_pooling(net: nn.Cell) -> int:
    """Replace ``net.pool`` (a models.GlobalAvgPool) by MatMulAvgPool; the count (0 or 1)."""
    # matched by name: ops serves models and does not import them
    if type(getattr(net, "pool", None)).__name__ != "GlobalAvgPool":
        return 0
    net.pool = matmul_avg_pool()
    return 1
