"""Matrix-product global average pooling (mindcv_mnv2.ops.pooling): against numpy's mean, forward and
gradient, and swapped into the CPU training network only."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn  # noqa: E402

from mindcv_mnv2.models import create_model  # noqa: E402
from mindcv_mnv2.models.mobilenetv2 import GlobalAvgPool  # noqa: E402
from mindcv_mnv2.ops import apply_depthwise_kernel  # noqa: E402
from mindcv_mnv2.ops.pooling import matmul_avg_pool, swap_pooling  # noqa: E402

pytestmark = [pytest.mark.usefixtures("ms_cpu"), pytest.mark.numerics]


class _Weighted(nn.Cell):
    """sum(pool(x) * r): its gradient with respect to x is r / (H * W) spread over each plane."""

    def __init__(self, pool: nn.Cell, r: np.ndarray) -> None:
        super().__init__()
        self.pool, self.r = pool, ms.Tensor(r)

    def construct(self, x):
        return (self.pool(x) * self.r).sum()


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("shape", [(3, 16, 2, 2), (2, 24, 3, 3), (2, 8, 7, 7), (1, 5, 1, 1)])
def test_matmul_pool_and_its_gradient_match_numpy(request, mode, shape):
    """Forward = float64 mean of each plane, gradient = r / (H * W) broadcast, to float32 rounding."""
    request.getfixturevalue(mode)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal(shape[:2]).astype(np.float32)
    pool = matmul_avg_pool()
    y = pool(ms.Tensor(x)).asnumpy()
    want = x.astype(np.float64).mean(axis=(2, 3))
    # a sum of at most 49 float32 products: a few ulps of values of order 1
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    dx = ms.grad(_Weighted(pool, r))(ms.Tensor(x)).asnumpy()
    want_dx = np.broadcast_to((r.astype(np.float64) / (shape[2] * shape[3]))[:, :, None, None], shape)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-7)  # one product each: rounding of r / (H * W)


def test_swapped_on_the_cpu_training_kernels_only():
    """apply_depthwise_kernel's aot path swaps the network's pool; native keeps ReduceMean; a second swap is a no-op."""
    aot = create_model("mobilenet_v2_035", num_classes=10)
    native = create_model("mobilenet_v2_035", num_classes=10)
    assert type(aot.pool) is GlobalAvgPool
    assert apply_depthwise_kernel(aot, "aot", "CPU") == "aot"
    assert apply_depthwise_kernel(native, "native", "CPU") == "native"
    assert type(aot.pool).__name__ == "MatMulAvgPool"
    assert type(native.pool) is GlobalAvgPool
    assert swap_pooling(aot) == 0  # already swapped
    assert swap_pooling(nn.Dense(2, 2)) == 0  # nothing to swap
    # no Parameters: the checkpoint names of both networks are the same
    assert [p.name for p in aot.get_parameters()] == [p.name for p in native.get_parameters()]
