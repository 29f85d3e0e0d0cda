"""LR schedules against hand-computed values, weight-decay groups, losses."""
import math

import numpy as np
import pytest

from mindcv_mnv2.optim import create_lr_schedule, epochs_to_steps, weight_decay_groups


def test_epochs_to_steps_is_the_one_conversion():
    assert epochs_to_steps(2.5, 4) == 10
    assert epochs_to_steps(0.2, 468) == 94
    assert epochs_to_steps(0, 10) == 0


def test_linear_warmup_then_cosine():
    lr = create_lr_schedule("cosine_decay", 0.4, 10, 20, warmup_epochs=4, min_lr=0.0, decay_epochs=16)
    assert len(lr) == 200 and lr.dtype == np.float32
    np.testing.assert_allclose(lr[:4], [0.0, 0.01, 0.02, 0.03], rtol=1e-6)  # 0.4 * i / 40
    assert lr[40] == pytest.approx(0.4)
    # half-way through the cosine: (0.4 + 0) / 2
    assert lr[40 + 80] == pytest.approx(0.2, rel=1e-6)
    t = 159 / 10
    assert lr[-1] == pytest.approx(0.5 * 0.4 * (1 + math.cos(math.pi * t / 16)), rel=1e-5)


def test_warmup_factor_and_min_lr():
    lr = create_lr_schedule("cosine_decay", 1.0, 4, 3, warmup_epochs=1, warmup_factor=0.1, min_lr=0.1,
                            decay_epochs=2)
    np.testing.assert_allclose(lr[:4], [0.1, 0.325, 0.55, 0.775], rtol=1e-6)
    assert lr[4] == pytest.approx(1.0)
    assert min(lr[4:]) >= 0.1 - 1e-7


def test_fractional_step_decay_tf_slim():
    # x0.98 every 2.5 epochs with 4 steps per epoch -> every 10 steps
    lr = create_lr_schedule("step_decay", 0.045, 4, 10, decay_epochs=2.5, decay_rate=0.98)
    expected = [0.045 * 0.98 ** (i // 10) for i in range(40)]
    np.testing.assert_allclose(lr, expected, rtol=1e-6)


def test_exponential_decay_continuous_and_stair():
    lr = create_lr_schedule("exponential_decay", 1.0, 2, 4, decay_epochs=2.0, decay_rate=0.5)
    np.testing.assert_allclose(lr, [0.5 ** (i / 2 / 2) for i in range(8)], rtol=1e-6)
    stair = create_lr_schedule("exponential_decay", 1.0, 2, 4, decay_epochs=1.0, decay_rate=0.5, lr_epoch_stair=True)
    np.testing.assert_allclose(stair, [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125], rtol=1e-6)


def test_multi_step_after_warmup():
    lr = create_lr_schedule("multi_step_decay", 1.0, 2, 6, warmup_epochs=1, milestones=(2, 3.5), decay_rate=0.1)
    # warmup 2 steps, then milestones counted from the end of warmup
    np.testing.assert_allclose(lr, [0, 0.5, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01], rtol=1e-6, atol=1e-9)


def test_constant_and_cycles():
    np.testing.assert_allclose(create_lr_schedule("constant", 0.3, 3, 2), [0.3] * 6, rtol=1e-6)
    lr = create_lr_schedule("cosine_decay", 1.0, 1, 6, decay_epochs=2, num_cycles=2, cycle_decay=0.5, min_lr=0.0)
    np.testing.assert_allclose(lr, [1.0, 0.5, 0.5, 0.25, 0.0, 0.0], atol=1e-6)


def test_unknown_scheduler():
    with pytest.raises(ValueError, match="scheduler"):
        create_lr_schedule("cosine", 0.1, 1, 1)


class _P:
    def __init__(self, name, requires_grad=True):
        self.name, self.requires_grad = name, requires_grad


PARAMS = [_P("features.0.weight"), _P("features.1.gamma"), _P("features.1.beta"),
          _P("features.1.moving_mean", False), _P("classifier.1.weight"), _P("classifier.1.bias")]


def _decayed(groups):
    return {p.name for g in groups if "params" in g and g["weight_decay"] > 0 for p in g["params"]}


def test_weight_decay_filters_do_what_they_say():
    assert _decayed(weight_decay_groups(PARAMS, 1e-4, "disable")) == {
        "features.0.weight", "features.1.gamma", "features.1.beta", "classifier.1.weight", "classifier.1.bias"}
    assert _decayed(weight_decay_groups(PARAMS, 1e-4, "auto")) == {
        "features.0.weight", "classifier.1.weight", "classifier.1.bias"}
    assert _decayed(weight_decay_groups(PARAMS, 1e-4, "norm_and_bias")) == {
        "features.0.weight", "classifier.1.weight"}
    with pytest.raises(ValueError, match="weight_decay_filter"):
        weight_decay_groups(PARAMS, 1e-4, "everything")


def test_losses_smoothing_and_soft_labels():
    import mindspore as ms

    from mindcv_mnv2.optim import create_loss

    logits = ms.Tensor(np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32))
    labels = ms.Tensor(np.array([0, 1], np.int32))
    z = logits.asnumpy().astype(np.float64)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ce = -logp[[0, 1], [0, 1]].mean()
    assert float(create_loss("CE", 3)(logits, labels).asnumpy()) == pytest.approx(ce, rel=1e-5)
    eps = 0.1
    target = np.full((2, 3), eps / 3)
    target[[0, 1], [0, 1]] += 1 - eps
    smooth = -(target * logp).sum(1).mean()
    assert float(create_loss("CE", 3, eps)(logits, labels).asnumpy()) == pytest.approx(smooth, rel=1e-5)
    soft = ms.Tensor(target.astype(np.float32))
    assert float(create_loss("CE", 3)(logits, soft).asnumpy()) == pytest.approx(smooth, rel=1e-5)
    bce = create_loss("BCE", 3)(logits, labels).asnumpy()
    onehot = np.eye(3)[[0, 1]]
    ref = np.mean(np.maximum(z, 0) - z * onehot + np.log1p(np.exp(-np.abs(z))))
    assert float(bce) == pytest.approx(ref, rel=1e-5)
