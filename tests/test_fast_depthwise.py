"""The C++ depthwise kernel (mindcv_mnv2.ops): exact against nn.Conv2d, same names, same training, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from mindcv_mnv2.models import create_model  # noqa: E402
from mindcv_mnv2.ops import (KernelBuildError, build_library, kernel_in_use, resolve_kernel,  # noqa: E402
                             swap_batchnorm, swap_depthwise)
from mindcv_mnv2.ops.depthwise import aot_depthwise  # noqa: E402

pytestmark = [pytest.mark.usefixtures("ms_cpu"), pytest.mark.numerics]


def _conv(c: int, stride: int, weight: np.ndarray, dilation: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(c, c, 3, stride, pad_mode="pad", padding=dilation, dilation=dilation, group=c, has_bias=False)
    conv.weight.set_data(ms.Tensor(weight))
    return conv


def _grads(layer, x: np.ndarray, r: np.ndarray):
    """(y, dL/dx, dL/dw) for L = sum(layer(x) * r)."""
    weights = ms.ParameterTuple(layer.trainable_params())

    def loss(inp):
        return (layer(inp) * ms.Tensor(r)).sum()

    xt = ms.Tensor(x)
    _, (gx, (gw,)) = ops.value_and_grad(loss, 0, weights)(xt)
    return layer(xt).asnumpy(), gx.asnumpy(), gw.asnumpy()


@pytest.mark.parametrize("shape,stride,dilation", [
    ((2, 3, 8, 8), 1, 1), ((2, 3, 8, 8), 2, 1), ((3, 5, 7, 9), 1, 1), ((3, 5, 7, 9), 2, 1), ((1, 4, 1, 1), 1, 1),
    ((2, 4, 2, 2), 2, 1), ((2, 2, 1, 5), 2, 1), ((2, 3, 6, 7), 1, 2), ((2, 3, 2, 2), 1, 2), ((2, 3, 9, 5), 1, 4),
    ((1, 2, 3, 3), 1, 4), ((1, 2, 5, 21), 2, 1), ((1, 2, 4, 34), 2, 1),
    # narrow maps run 8 channels per vector: whole groups of 8, a partial one, groups across images
    ((2, 12, 6, 6), 1, 1), ((3, 16, 5, 4), 2, 1), ((2, 10, 4, 4), 1, 2), ((2, 9, 2, 2), 1, 4),
    ((4, 6, 8, 8), 2, 1), ((2, 9, 7, 15), 2, 1)])
def test_forward_and_gradients_match_conv2d(pynative, shape, stride, dilation):
    """Output, input gradient and weight gradient equal nn.Conv2d(group=C) to float rounding (odd sizes too)."""
    rng = np.random.default_rng(sum(shape) + stride + 10 * dilation)
    n, c, h, w = shape
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    ref = _conv(c, stride, weight, dilation)
    fast = aot_depthwise(ms.Parameter(ms.Tensor(weight), name="weight"), stride, dilation)
    y_ref = ref(ms.Tensor(x)).asnumpy()
    r = rng.standard_normal(y_ref.shape).astype(np.float32)
    for got, want, what in zip(_grads(fast, x, r), _grads(ref, x, r), ("output", "grad input", "grad weight")):
        assert got.shape == want.shape, what
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=what)


def test_non_float32_input_is_an_error_not_garbage(pynative):
    """The kernel reads raw float32; a float16 tensor must fail instead of returning nonsense."""
    fast = aot_depthwise(ms.Parameter(ms.Tensor(np.ones((2, 1, 3, 3), np.float16)), name="weight"), 1)
    with pytest.raises(Exception):
        fast(ms.Tensor(np.ones((1, 2, 4, 4), np.float16))).asnumpy()


def test_swap_keeps_names_and_outputs(pynative):
    """17 depthwise convs swapped; parameter names and objects unchanged; eval outputs equal native."""
    ms.set_seed(3)
    net = create_model("mobilenet_v2_035", num_classes=10)
    before = [(p.name, id(p)) for p in net.get_parameters()]
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 40, 40)).astype(np.float32))
    want = net.forward_features(x).asnumpy()
    assert kernel_in_use(net) == "native" and swap_depthwise(net) == 17 and kernel_in_use(net) == "aot"
    assert [(p.name, id(p)) for p in net.get_parameters()] == before
    got = net.forward_features(x).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_tf_same_strided_convs_keep_native_and_dilated_ones_are_swapped(pynative):
    """tf_same's strided convs (asymmetric padding) keep MindSpore's kernel; output_stride 8/16 is covered."""
    tf = create_model("mobilenet_v2_035", num_classes=10, padding="tf_same")
    assert swap_depthwise(tf) == 13  # 17 depthwise convs, 4 of them strided
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32))
    for os_ in (8, 16):
        net = create_model("mobilenet_v2_035", num_classes=10, output_stride=os_)
        net.set_train(False)
        dilations = {tuple(c.dilation)[0] for _, c in net.cells_and_names()
                     if isinstance(c, nn.Conv2d) and c.group > 1}
        assert dilations == ({1, 2, 4} if os_ == 8 else {1, 2})
        want = net.forward_features(x).asnumpy()
        assert swap_depthwise(net) == 17
        np.testing.assert_allclose(net.forward_features(x).asnumpy(), want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="no stride 2 / dilation 2 variant"):
        aot_depthwise(None, 2, 2)  # checked before the weight is used


class _LossAndGrads(nn.Cell):
    """Graph-compiled (loss, gradients of every trainable parameter) of net in training mode."""

    def __init__(self, net):
        super().__init__()
        self.net, self.loss = net, nn.CrossEntropyLoss()
        self.weights = ms.ParameterTuple(net.trainable_params())

    def forward(self, x, y):
        return self.loss(self.net(x), y)

    def construct(self, x, y):
        return ops.value_and_grad(self.forward, None, self.weights)(x, y)


def test_training_gradients_match_native_kernel(graph):
    """Graph mode, BN in training mode: loss and every parameter's gradient on the C++ kernels (depthwise
    and BatchNorm) agree with the native kernels to within the native kernels' own rounding noise.

    A comparison of weights after several SGD steps would not be honest here: on a batch this small
    a 1e-6 relative change of one weight already changes the third step's loss by ~10% (measured),
    so rounding differences are amplified whatever the kernel. One step's gradients are not.
    """
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 48, 48)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    perm = rng.permutation(8)

    def run(kernel, order):
        ms.set_seed(0)
        net = create_model("mobilenet_v2_035", num_classes=10)
        if kernel == "aot":  # what depthwise_kernel auto runs on CPU: the depthwise and BatchNorm kernels
            assert swap_depthwise(net) == 17 and swap_batchnorm(net) == 52
        net.set_train(True)
        step = _LossAndGrads(net)
        loss, grads = step(ms.Tensor(x[order]), ms.Tensor(y[order]))
        return float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(step.weights, grads)}

    l_native, g_native = run("native", np.arange(8))
    l_aot, g_aot = run("aot", np.arange(8))
    # The same batch in another order: mathematically the same loss and gradients (BN statistics and
    # the mean loss are order-free), so what changes is the native kernels' own float32 rounding.
    _, g_perm = run("native", perm)
    assert l_aot == pytest.approx(l_native, rel=1e-5)
    assert g_aot.keys() == g_native.keys() and len(g_native) == 158
    scale = max(np.linalg.norm(g) for g in g_native.values())
    for name, want in g_native.items():
        err = np.linalg.norm(g_aot[name] - want)
        noise = np.linalg.norm(g_perm[name] - want)
        # Per parameter, so a layer with small gradients is checked as strictly as a large one. Where
        # the summed terms cancel (BN gammas before a depthwise conv: 1e-5 of the largest gradient norm)
        # rounding is large relative to the result, and the noise floor measured above says by how much.
        # 4x that floor, plus 1e-8 of the largest gradient for exact zeros, admits a different summation
        # order and nothing else: a wrong tap or stride is ~1e4 times the floor.
        # (measured: the C++ kernel's difference is at most 0.96 of the floor, unset / SSE41 / x86-64)
        assert err <= 4 * noise + 1e-8 * scale, (name, err, noise, np.linalg.norm(want))


def test_resolution_per_device():
    """auto = aot on CPU, native on GPU/Ascend; aot on GPU is an error; native is always native."""
    assert resolve_kernel("native", "CPU") == ("native", None)
    assert resolve_kernel("auto", "CPU") == ("aot", None)
    kernel, why = resolve_kernel("auto", "Ascend")
    assert kernel == "native" and "Ascend" in why
    with pytest.raises(KernelBuildError, match="device_target is GPU"):
        resolve_kernel("aot", "GPU")
    with pytest.raises(ValueError, match="auto, native, aot"):
        resolve_kernel("fast", "CPU")


def test_build_is_cached_and_a_missing_compiler_is_explained(tmp_path, monkeypatch):
    """One build per machine; without g++, auto falls back to native and aot names the fix."""
    monkeypatch.setenv("MINDCV_MNV2_CACHE", str(tmp_path / "cache"))
    build_library.cache_clear()
    try:
        lib = build_library()
        assert lib.parent == tmp_path / "cache" and lib.stat().st_size > 0
        stamp = lib.stat().st_mtime_ns
        build_library.cache_clear()
        assert build_library() == lib and lib.stat().st_mtime_ns == stamp  # reused, not rebuilt
        assert [p.name for p in lib.parent.iterdir()] == [lib.name]  # no temporary files left
        monkeypatch.setenv("MINDCV_MNV2_CACHE", str(tmp_path / "empty"))
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
        build_library.cache_clear()
        kernel, why = resolve_kernel("auto", "CPU")
        assert kernel == "native" and "no C++ compiler" in why
        with pytest.raises(KernelBuildError, match=r"apt-get install g\+\+.*depthwise_kernel: native"):
            resolve_kernel("aot", "CPU")
        monkeypatch.delenv("CXX")
        (tmp_path / "a_file").write_text("")
        monkeypatch.setenv("MINDCV_MNV2_CACHE", str(tmp_path / "a_file" / "cache"))  # cannot be created
        build_library.cache_clear()
        with pytest.raises(KernelBuildError, match="cannot write the kernel cache .*MINDCV_MNV2_CACHE"):
            resolve_kernel("aot", "CPU")
    finally:
        build_library.cache_clear()


def _fake_compiler(path, body):
    """A stand-in for g++ that answers --version and then does ``body`` when asked to compile."""
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "fake-g++ 1.0"; exit 0; fi\n{body}\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("body, needle", [
    ('echo "depthwise.cc:1: error: something broke" >&2; exit 1', "depthwise.cc:1: error: something broke"),
    ("exec sleep 60", "timed out after 2"),  # a compiler that hangs
])
def test_compiler_that_fails_or_hangs(body, needle, tmp_path, monkeypatch):
    """auto falls back to native with the reason; aot is one KernelBuildError naming the fix."""
    from mindcv_mnv2.ops import depthwise

    monkeypatch.setenv("MINDCV_MNV2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path / "g++", body)))
    monkeypatch.setattr(depthwise, "BUILD_TIMEOUT_S", 2.0)
    build_library.cache_clear()
    try:
        kernel, why = resolve_kernel("auto", "CPU")
        assert kernel == "native" and "building the fast depthwise kernel failed" in why
        build_library.cache_clear()
        with pytest.raises(KernelBuildError) as info:
            resolve_kernel("aot", "CPU")
        assert needle in str(info.value) and "depthwise_kernel: native" in str(info.value)
        assert not any((tmp_path / "cache").glob("*.so"))  # nothing half-built is kept
    finally:
        build_library.cache_clear()


def test_march_override_builds_a_separate_baseline_library(monkeypatch):
    """MINDCV_MNV2_MARCH=x86-64 builds baseline code under its own name; a bad value is one clear error.

    In the suite's own kernel cache: the native library is the one every other test uses and the
    baseline one is what make test-isa runs, so each is compiled once per machine (~14 s a build);
    building into an empty cache is test_build_is_cached_and_a_missing_compiler_is_explained's subject.
    """
    monkeypatch.delenv("MINDCV_MNV2_MARCH", raising=False)  # the suite may itself run on a baseline build
    build_library.cache_clear()
    try:
        native = build_library()
        monkeypatch.setenv("MINDCV_MNV2_MARCH", "x86-64")
        build_library.cache_clear()
        baseline = build_library()
        assert baseline != native and baseline.exists() and native.exists()
        monkeypatch.setenv("MINDCV_MNV2_MARCH", "x86-64; rm -rf /")
        build_library.cache_clear()
        with pytest.raises(KernelBuildError, match="MINDCV_MNV2_MARCH=.* is not a -march target"):
            build_library()
    finally:
        build_library.cache_clear()
