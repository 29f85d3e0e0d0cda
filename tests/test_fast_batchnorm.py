"""The C++ training BatchNorm (+ ReLU6) kernel (mindcv_mnv2.ops.batchnorm): against a float64 numpy
BatchNorm, against nn.BatchNorm2d's moving-statistics rule and eval mode, same Parameters, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from mindcv_mnv2.models import create_model  # noqa: E402
from mindcv_mnv2.ops import apply_depthwise_kernel, swap_batchnorm  # noqa: E402

pytestmark = [pytest.mark.usefixtures("ms_cpu"), pytest.mark.numerics]
EPS = 1e-5


def _numpy_bn(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, r: np.ndarray, relu6: bool):
    """float64 reference: (y, dL/dx, dL/dgamma, dL/dbeta, batch mean, unbiased batch var), L = sum(y * r)."""
    x, r = x.astype(np.float64), r.astype(np.float64)
    g, b = gamma.astype(np.float64)[None, :, None, None], beta.astype(np.float64)[None, :, None, None]
    axes = (0, 2, 3)
    m = x.size // x.shape[1]
    mu = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    xhat = (x - mu) / np.sqrt(var + EPS)
    z = xhat * g + b
    y = np.clip(z, 0, 6) if relu6 else z
    dz = r * ((z > 0) & (z < 6)) if relu6 else r
    dbeta = dz.sum(axes)
    dgamma = (dz * xhat).sum(axes)
    dx = g / np.sqrt(var + EPS) * (dz - dbeta[None, :, None, None] / m - xhat * dgamma[None, :, None, None] / m)
    return y, dx, dgamma, dbeta, mu.ravel(), var.ravel() * m / max(m - 1, 1)


def _layers(c: int, relu6: bool, gamma: np.ndarray, beta: np.ndarray) -> nn.SequentialCell:
    net = nn.SequentialCell([nn.BatchNorm2d(c, eps=EPS, momentum=0.9)] + ([nn.ReLU6()] if relu6 else []))
    net[0].gamma.set_data(ms.Tensor(gamma))
    net[0].beta.set_data(ms.Tensor(beta))
    return net


class _ValueAndGrads(nn.Cell):
    """(sum(net(x) * r), (dx, (dgamma, dbeta))) in one compiled call."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.weights = ms.ParameterTuple(net.trainable_params())

    def forward(self, x, r):
        return (self.net(x) * r).sum()

    def construct(self, x, r):
        return ops.value_and_grad(self.forward, 0, self.weights)(x, r)


@pytest.mark.parametrize("shape", [(4, 8, 6, 6), (3, 5, 7, 9), (1, 3, 1, 1), (2, 4, 1, 5), (16, 16, 12, 12)])
@pytest.mark.parametrize("relu6", [True, False])
def test_forward_gradients_and_statistics_match_float64_numpy(graph, shape, relu6):
    """Output, input / gamma / beta gradients and the moving statistics after one step equal a float64
    numpy BatchNorm (+ ReLU6) to float32 rounding, in graph mode, odd and 1x1 maps included."""
    rng = np.random.default_rng(sum(shape) + relu6)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)  # off-centre: the mean matters
    r = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-1, 2, c).astype(np.float32)  # with x, puts ~20% of outputs below 0 or above 6
    net = _layers(c, relu6, gamma, beta)
    assert swap_batchnorm(net) == 1
    net.set_train(True)
    _, (dx, (dgamma, dbeta)) = _ValueAndGrads(net)(ms.Tensor(x), ms.Tensor(r))
    y_ref, dx_ref, dg_ref, db_ref, mean, var = _numpy_bn(x, gamma, beta, r, relu6)
    # float32 results of O(1) values: 2e-5 relative to the largest value is ~150 float32 ulps, room for
    # float32 products and a different summation order; a wrong mask, mean or variance is O(1e-1) off.
    for got, want, what in ((dx, dx_ref, "dx"), (dgamma, dg_ref, "dgamma"), (dbeta, db_ref, "dbeta")):
        got = got.asnumpy()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max() + 1e-6, err_msg=what)
    # The gradient call ran the forward once: moving = 0.9 * (0, 1) + 0.1 * batch (nn.BatchNorm2d's rule).
    bn = net[0]
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.asnumpy(), 0.9 + 0.1 * var, rtol=1e-5, atol=1e-6)
    y = net(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5 * np.abs(y_ref).max())


def test_moving_statistics_and_eval_mode_match_nn_batchnorm2d(pynative):
    """Three training calls, then eval mode: moving mean / variance and eval outputs equal nn.BatchNorm2d's."""
    rng = np.random.default_rng(3)
    gamma, beta = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.uniform(-1, 1, 6).astype(np.float32)
    native, fast = _layers(6, True, gamma, beta), _layers(6, True, gamma, beta)
    swap_batchnorm(fast)
    for net in (native, fast):
        net.set_train(True)
    batches = [(rng.standard_normal((4, 6, 5, 5)) * 2 + 0.5).astype(np.float32) for _ in range(3)]
    for xb in batches:
        native(ms.Tensor(xb)), fast(ms.Tensor(xb))
    for name in ("moving_mean", "moving_variance"):  # rounding of three float32 updates
        np.testing.assert_allclose(getattr(fast[0], name).asnumpy(), getattr(native[0], name).asnumpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    native.set_train(False)
    fast.set_train(False)
    x = (rng.standard_normal((2, 6, 5, 5)) * 2).astype(np.float32)
    np.testing.assert_allclose(fast(ms.Tensor(x)).asnumpy(), native(ms.Tensor(x)).asnumpy(), rtol=1e-5, atol=1e-5)


class _Tiny(nn.SequentialCell):
    """conv - BatchNorm - ReLU6 - pool - dense: the smallest network TrainStep trains."""

    def __init__(self) -> None:
        super().__init__([nn.Conv2d(3, 6, 3, has_bias=False), nn.BatchNorm2d(6, eps=EPS, momentum=0.9), nn.ReLU6(),
                          nn.Conv2d(6, 6, 3, has_bias=False), nn.BatchNorm2d(6, eps=EPS, momentum=0.9), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dense(6, 4)])


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_moving_statistics_update_in_place_under_the_ema_step(request, mode):
    """The kernel writes the moving statistics itself, declared to MindSpore as a write of those inputs.
    Undeclared, graph mode handed the kernel a copy when the EMA update also read them: they stayed at
    0 / 1 and validation scored chance. After TrainStep with EMA, the moving statistics and their EMA
    copies must be nn.BatchNorm2d's."""
    from mindcv_mnv2.engine.train_step import TrainStep
    from mindcv_mnv2.optim import create_loss, create_optimizer

    request.getfixturevalue(mode)
    rng = np.random.default_rng(5)
    batches = [((rng.standard_normal((4, 3, 6, 6)) * 2 + 0.5).astype(np.float32),
                rng.integers(0, 4, 4).astype(np.int32)) for _ in range(2)]
    state = {}
    for kind in ("native", "fast"):
        ms.set_seed(7)
        net = _Tiny()
        if kind == "fast":
            assert swap_batchnorm(net) == 2
        opt = create_optimizer(net.trainable_params(), "momentum", np.full(4, 0.01, np.float32), momentum=0.9)
        step = TrainStep(net, create_loss("CE", 4, 0.0), opt, ema_decay=0.5)
        step.set_train(True)
        for x, y in batches:
            step(ms.Tensor(x), ms.Tensor(y))
        state[kind] = {p.name: p.asnumpy() for p in step.get_parameters() if "moving" in p.name}
    assert sorted(state["fast"]) == sorted(state["native"]) and len(state["native"]) == 8  # and EMA copies
    for name, want in state["native"].items():  # rounding of two float32 updates
        np.testing.assert_allclose(state["fast"][name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(state["native"]["1.moving_mean"]).max() > 0.01  # the statistics really moved from 0


def test_swap_keeps_parameters_names_and_order():
    """52 BatchNorms swapped (35 with their ReLU6 fused); the network's Parameters are the same objects,
    names and order, so checkpoints, optimizer slots and MindCV's files are unchanged."""
    net = create_model("mobilenet_v2_035", num_classes=10)
    before = list(net.get_parameters())
    assert swap_batchnorm(net) == 52
    after = list(net.get_parameters())
    assert [p.name for p in after] == [p.name for p in before] and all(a is b for a, b in zip(after, before))
    kinds = [type(c).__name__ for _, c in net.cells_and_names()]
    assert kinds.count("AotBatchNorm") == 52 and kinds.count("FusedReLU6") == 35 and "BatchNorm2d" not in kinds
    assert swap_batchnorm(net) == 0  # idempotent: nothing left to swap
    # a BatchNorm told to always use the moving (or the batch) statistics keeps MindSpore's layer
    fixed = nn.SequentialCell([nn.BatchNorm2d(4, use_batch_statistics=False), nn.ReLU6()])
    assert swap_batchnorm(fixed) == 0 and type(fixed[0]) is nn.BatchNorm2d and type(fixed[1]) is nn.ReLU6


def test_cpu_kernels_apply_to_both_layer_kinds():
    """depthwise_kernel auto on CPU swaps both the depthwise convs and the BatchNorms; native swaps neither."""
    net = create_model("mobilenet_v2_035", num_classes=10)
    assert apply_depthwise_kernel(net, "native", "CPU") == "native"
    assert not any(type(c).__name__.startswith("Aot") for _, c in net.cells_and_names())
    assert apply_depthwise_kernel(net, "auto", "CPU") == "aot"
    kinds = [type(c).__name__ for _, c in net.cells_and_names()]
    assert kinds.count("AotDepthwise") == 17 and kinds.count("AotBatchNorm") == 52


def test_non_float32_input_is_an_error_not_garbage(pynative):
    """The kernel reads raw float32; a float16 batch must fail instead of returning nonsense."""
    net = _layers(2, True, np.ones(2, np.float32), np.zeros(2, np.float32))
    swap_batchnorm(net)
    net.set_train(True)
    with pytest.raises(Exception):
        net(ms.Tensor(np.ones((2, 2, 3, 3), np.float16))).asnumpy()
