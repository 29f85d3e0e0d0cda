"""The compiled train step against numpy: every optimizer's update (weight-decay filter included),
gradient accumulation (graph and PyNative), EMA, dynamic loss scaling and drop_overflow_update.

A small cell whose parameters are named like MobileNetV2's (``fc.weight``, ``fc.bias``,
``norm.gamma``, ``norm.beta``) makes the weight-decay filters act as they do on the real network,
and keeps every reference update a few lines of numpy written from the optimizer's formula.
"""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Parameter, Tensor, nn, ops  # noqa: E402

from mindcv_mnv2.engine.train_step import AccumulateStep, ApplyAccumulated, TrainStep  # noqa: E402
from mindcv_mnv2.optim import create_loss, create_optimizer  # noqa: E402

pytestmark = [pytest.mark.usefixtures("ms_cpu"), pytest.mark.numerics]

IN, OUT, BATCH = 5, 4, 8
LRS = np.array([0.1, 0.05, 0.02, 0.01], np.float32)  # one per step: the step must use its own entry
WD = 0.1
# float32 updates vs float64 numpy over four steps: parameters are O(0.1-1) and each step moves them by
# up to lr = 0.1, so float32 rounding (~6e-8 relative) accumulates to a few 1e-7; 1e-6 / 1e-5 bound it
# with room, while a wrong formula (a missed decay, bias correction or epsilon placement) is >= 1e-4 off.
RTOL, ATOL = 1e-5, 1e-6


class TinyNet(nn.Cell):
    """y = (x W^T + b) * gamma + beta, with MobileNetV2-like parameter names."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.RandomState(seed)
        self.w = Parameter(Tensor(rng.normal(0, 0.5, (OUT, IN)).astype(np.float32)), name="fc.weight")
        self.b = Parameter(Tensor(rng.normal(0, 0.1, (OUT,)).astype(np.float32)), name="fc.bias")
        self.gamma = Parameter(Tensor(rng.uniform(0.5, 1.5, (OUT,)).astype(np.float32)), name="norm.gamma")
        self.beta = Parameter(Tensor(rng.normal(0, 0.1, (OUT,)).astype(np.float32)), name="norm.beta")

    def construct(self, x):
        return (ops.matmul(x, self.w.T) + self.b) * self.gamma + self.beta


def _batches(n: int, seed: int = 1):
    rng = np.random.RandomState(seed)
    return [(rng.normal(0, 1, (BATCH, IN)).astype(np.float32), rng.randint(0, OUT, BATCH).astype(np.int32))
            for _ in range(n)]


def _np_grads(params, x, y):
    """Gradients of mean softmax cross-entropy of TinyNet, in float64 (the reference's own backward)."""
    w, b, g, be = (params[k].astype(np.float64) for k in ("fc.weight", "fc.bias", "norm.gamma", "norm.beta"))
    z = x @ w.T + b
    logits = z * g + be
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(OUT)[y]) / len(y)
    dz = d * g
    return {"fc.weight": dz.T @ x, "fc.bias": dz.sum(0), "norm.gamma": (d * z).sum(0), "norm.beta": d.sum(0)}


def _decayed(name: str, filt: str) -> bool:
    if filt == "disable":
        return True
    if filt == "auto":
        return not name.startswith("norm.")
    return name == "fc.weight"  # norm_and_bias


def _reference(opt: str, filt: str, params, batches, lrs, momentum=0.9, eps=1e-8, rho=0.9, nesterov=False):
    """Numpy updates written from each optimizer's formula; returns the parameters after every step."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    state = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v), "ms": np.ones_like(v), "mom": np.zeros_like(v)}
             for k, v in p.items()}
    # MindSpore holds hyperparameters as float32 tensors: 1 - float32(0.999) is 1.3e-5 away from 0.001,
    # which moves Adam's first step by 6e-6 relative; the reference uses the same constants.
    b1, b2, momentum, rho = (float(np.float32(v)) for v in (0.9, 0.999, momentum, rho))
    history = []
    for t, ((x, y), lr) in enumerate(zip(batches, lrs), start=1):
        grads = _np_grads(p, x.astype(np.float64), y)
        for k in p:
            g, s, wd = grads[k], state[k], WD if _decayed(k, filt) else 0.0
            if opt == "adamw":  # decoupled decay, no bias correction (MindSpore's AdamWeightDecay)
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                p[k] = p[k] - lr * (s["m"] / (np.sqrt(s["v"]) + eps) + wd * p[k])
                continue
            g = g + wd * p[k]  # L2 decay folded into the gradient
            if opt in ("momentum", "sgd"):
                s["mom"] = momentum * s["mom"] + g
                p[k] = p[k] - lr * (g + momentum * s["mom"] if nesterov else s["mom"])
            elif opt == "rmsprop":  # TensorFlow's: mean square starts at 1, epsilon inside the root
                s["ms"] = rho * s["ms"] + (1 - rho) * g * g
                s["mom"] = momentum * s["mom"] + lr * g / np.sqrt(s["ms"] + eps)
                p[k] = p[k] - s["mom"]
            elif opt == "adam":
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                p[k] = p[k] - lr_t * s["m"] / (np.sqrt(s["v"]) + eps)
        history.append({k: v.copy() for k, v in p.items()})
    return history


def _step(net, opt_name, filt="norm_and_bias", lrs=LRS, **kw):
    opt = create_optimizer(net.trainable_params(), opt_name, lrs, momentum=0.9, weight_decay=WD,
                           weight_decay_filter=filt, eps=1e-8, rmsprop_decay=0.9,
                           use_nesterov=kw.pop("use_nesterov", False), fused=kw.pop("fused", False))
    return TrainStep(net, create_loss("CE", OUT), opt, **kw)


def _values(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


@pytest.mark.parametrize("opt,filt,nesterov", [
    ("momentum", "norm_and_bias", False), ("momentum", "auto", False), ("momentum", "disable", False),
    ("momentum", "norm_and_bias", True), ("sgd", "norm_and_bias", False), ("rmsprop", "norm_and_bias", False),
    ("adam", "norm_and_bias", False), ("adamw", "norm_and_bias", False), ("adamw", "auto", False)])
def test_optimizer_update_matches_numpy(opt, filt, nesterov, pynative):
    net = TinyNet()
    start = _values(net)
    step = _step(net, opt, filt, use_nesterov=nesterov)
    batches = _batches(len(LRS))
    ref = _reference(opt, filt, start, batches, LRS, nesterov=nesterov)
    for t, (x, y) in enumerate(batches):
        step(Tensor(x), Tensor(y))
        for name, got in _values(net).items():
            np.testing.assert_allclose(got, ref[t][name], rtol=RTOL, atol=ATOL, err_msg=f"{opt} step {t + 1} {name}")
    # the filter matters: the same run with every parameter decayed ends elsewhere (where it should differ)
    if filt == "norm_and_bias":
        other = _reference(opt, "disable", start, batches, LRS, nesterov=nesterov)[-1]["norm.gamma"]
        assert np.abs(other - ref[-1]["norm.gamma"]).max() > 1e-4


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("filt", ["norm_and_bias", "disable"])
def test_fused_momentum_matches_numpy_and_keeps_the_slots(mode, filt, request):
    """The one-operator momentum (CPU's C++ kernel) makes nn.Momentum's updates, schedule and decay
    groups included, in both modes, and keeps nn.Momentum's state names (checkpoints and resume)."""
    request.getfixturevalue(mode)
    net = TinyNet()
    start = _values(net)
    step = _step(net, "momentum", filt, fused=True)
    assert type(step.optimizer).__name__ == "FusedMomentum"
    plain = create_optimizer(TinyNet().trainable_params(), "momentum", LRS, momentum=0.9, weight_decay=WD,
                             weight_decay_filter=filt)
    assert sorted(p.name for p in step.optimizer.get_parameters()) == sorted(p.name for p in plain.get_parameters())
    batches = _batches(len(LRS))
    ref = _reference("momentum", filt, start, batches, LRS)
    for t, (x, y) in enumerate(batches):
        step(Tensor(x), Tensor(y))
        for name, got in _values(net).items():
            np.testing.assert_allclose(got, ref[t][name], rtol=RTOL, atol=ATOL, err_msg=f"{mode} step {t + 1} {name}")
    assert int(step.optimizer.global_step.asnumpy()[0]) == len(LRS)
    moments = {p.name: p.asnumpy() for p in step.optimizer.moments}
    assert all(np.abs(m).max() > 0 for m in moments.values()), moments  # the state is written in place


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_accumulated_update_is_the_mean_of_its_batches(mode, request):
    """accumulate 2: each update applies the mean gradient of its two batches, in both modes.

    Equal batch sizes make that mean the gradient of the two batches joined, so the numpy reference
    is one update per joined batch.
    """
    request.getfixturevalue(mode)
    net = TinyNet()
    start = _values(net)
    step = _step(net, "momentum", accumulate=2)
    micro, apply = AccumulateStep(step), ApplyAccumulated(step)
    batches = _batches(4)
    joined = [(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])) for a, b in zip(batches[::2], batches[1::2])]
    ref = _reference("momentum", "norm_and_bias", start, joined, LRS[:2])
    for t in range(2):
        micro(Tensor(batches[2 * t][0]), Tensor(batches[2 * t][1]))
        loss = micro(Tensor(batches[2 * t + 1][0]), Tensor(batches[2 * t + 1][1]))
        apply(loss)
        for name, got in _values(net).items():
            np.testing.assert_allclose(got, ref[t][name], rtol=RTOL, atol=ATOL, err_msg=f"{mode} update {t + 1} {name}")
        assert all(not p.asnumpy().any() for p in step.accum)  # the sums start again from zero
    with pytest.raises(RuntimeError, match="call AccumulateStep"):
        step(Tensor(batches[0][0]), Tensor(batches[0][1]))  # the update would ignore the sums


@pytest.mark.parametrize("fused, mode", [(False, "pynative"), (True, "pynative"), (True, "graph")],
                         ids=["nn.Momentum", "fused-pynative", "fused-graph"])
def test_ema_follows_its_formula(fused, mode, request):
    """ema <- d ema + (1 - d) w after each update, d = decay (1 - exp(-updates / 2000)) (MindCV's warm-up);
    with the fused momentum too, whose in-place writes the EMA must read after (graph mode orders them)."""
    request.getfixturevalue(mode)
    decay = 0.5  # far from 1, so EMA and raw weights differ by a lot after a few steps
    net = TinyNet()
    step = _step(net, "momentum", ema_decay=decay, fused=fused)
    step.ema_updates.set_data(Tensor(4000.0, ms.float32))  # past the warm-up: d is within 7% of decay
    ema = {k: v.astype(np.float64) for k, v in _values(net).items()}  # EMA starts as a copy of the weights
    updates = 4000.0
    for x, y in _batches(3):
        step(Tensor(x), Tensor(y))
        updates += 1
        d = decay * (1.0 - np.exp(-updates / 2000.0))
        w = _values(net)
        ema = {k: d * ema[k] + (1 - d) * w[k] for k in ema}
    params = step.parameters_dict()
    for k in ema:
        got = params["ema." + k].asnumpy()
        np.testing.assert_allclose(got, ema[k], rtol=1e-6, atol=1e-7, err_msg=k)  # float32 blends of 3 steps
        assert np.abs(got - w[k]).max() > 1e-4, k  # a real average, not a copy of the weights
    assert float(params["ema.updates"].asnumpy()) == 4003.0


def _overflowing_batch():
    """A batch whose gradients x 3e38 overflow float32 (|grad| >> 1), as fp16 gradients do on GPU/Ascend."""
    x, y = _batches(1)[0]
    return x * 1000.0, y


def test_overflow_skips_update_and_halves_dynamic_scale(pynative):
    net = TinyNet()
    before = _values(net)
    huge = 3.0e38
    step = _step(net, "momentum", loss_scale=huge, dynamic_loss_scale=True, scale_window=3)
    x, y = _overflowing_batch()
    loss = step(Tensor(x), Tensor(y))
    assert np.isfinite(loss.asnumpy())  # the reported loss is the unscaled one, not inf / scale
    after = _values(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # update skipped, bit for bit
    assert float(step.loss_scale.asnumpy()) == np.float32(huge / 2)
    assert int(step.optimizer.global_step.asnumpy().reshape(-1)[0]) == 0  # the optimizer did not run
    moments = [p.asnumpy() for n, p in step.parameters_dict().items() if n.startswith("moments.")]
    assert moments and all(not m.any() for m in moments)


def test_dynamic_scale_doubles_after_scale_window_good_steps(pynative):
    net = TinyNet()
    step = _step(net, "momentum", loss_scale=1024.0, dynamic_loss_scale=True, scale_window=3)
    scales = []
    for x, y in _batches(4):
        step(Tensor(x), Tensor(y))
        scales.append(float(step.loss_scale.asnumpy()))
    assert scales == [1024.0, 1024.0, 2048.0, 2048.0]
    assert int(step.good_steps.asnumpy()) == 1  # reset when the scale grew, then one more good step


def test_drop_overflow_update_with_fixed_scale(pynative):
    net = TinyNet()
    before = _values(net)
    step = _step(net, "momentum", loss_scale=3.0e38, drop_overflow_update=True)
    x, y = _overflowing_batch()
    step(Tensor(x), Tensor(y))
    assert all(np.array_equal(before[k], v) for k, v in _values(net).items())
    assert float(step.loss_scale.asnumpy()) == np.float32(3.0e38)  # fixed: never changes
    # without drop_overflow_update the same overflow is applied: the weights become non-finite
    net2 = TinyNet()
    _step(net2, "momentum", loss_scale=3.0e38)(Tensor(x), Tensor(y))
    assert not all(np.isfinite(v).all() for v in _values(net2).values())


def test_loss_scale_is_exact_when_nothing_overflows(pynative):
    """A power-of-two loss scale changes no bit of the update (scaling and unscaling are exact)."""
    results = []
    for scale in (1.0, 1024.0):
        net = TinyNet()
        step = _step(net, "momentum", loss_scale=scale, dynamic_loss_scale=scale > 1, scale_window=100)
        for x, y in _batches(3):
            step(Tensor(x), Tensor(y))
        results.append(_values(net))
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)


@pytest.mark.parametrize("opt", ["momentum", "sgd", "rmsprop", "adam", "adamw"])
def test_every_optimizer_slot_is_known_training_state(opt):
    """Checkpoints hold the step's Parameters: everything but the model's must be recognised as training
    state, or loading the file into a bare network (validate.py, predict, fine-tuning) fails."""
    from mindcv_mnv2.checkpoint import extract_model_state, is_training_state

    net = TinyNet()
    step = _step(net, opt, ema_decay=0.9, accumulate=2)  # EMA and accumulation add their own buffers
    model = {p.name for p in net.get_parameters()}
    names = [p.name for p in step.get_parameters()]
    assert len(names) == len(set(names)), "two buffers share a name"  # e.g. SGD's accum.* vs accumulation's
    assert [n for n in names if n not in model and not is_training_state(n)] == []
    assert set(extract_model_state({n: np.zeros(1) for n in names}, use_ema=False)) == model
