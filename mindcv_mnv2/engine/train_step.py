"""The compiled training step: forward, backward, loss scaling, clipping, update, EMA.

One cell covers every recipe option; options that are off add nothing to the graph
(they are Python constants when the graph is compiled).
"""
from __future__ import annotations

from typing import Optional, Sequence

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.ops import composite as C
from mindspore.ops import functional as F

from ..checkpoint import GRAD_ACCUM_PREFIX

_unscale = C.MultitypeFuncGraph("unscale")
_ema_update = C.MultitypeFuncGraph("ema_update")
_accumulate = C.MultitypeFuncGraph("accumulate")
_zero = C.MultitypeFuncGraph("zero")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(inv_scale, grad):
    return grad * F.cast(inv_scale, F.dtype(grad))


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_update_tensor(decay, ema, weight):
    return F.assign(ema, ema * decay + F.cast(weight, F.dtype(ema)) * (1.0 - decay))


@_accumulate.register("Tensor", "Tensor")
def _accumulate_tensor(acc, grad):
    return F.assign_add(acc, F.cast(grad, F.dtype(acc)))


@_zero.register("Tensor")
def _zero_tensor(acc):
    return F.assign(acc, F.zeros_like(acc))


class NetWithLoss(nn.Cell):
    """(loss x loss scale, loss): the first is differentiated, the second reported; keeps parameter names."""

    def __init__(self, net: nn.Cell, loss_fn: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, images, labels, scale):
        loss = self.loss_fn(self.net(images), labels)
        # The reported loss is computed unscaled: scaled / scale would be inf when only the
        # scaled value overflows, and the trainer would stop on a step the loss scaler skips.
        return loss * F.cast(scale, ms.float32), loss


class TrainStep(nn.Cell):
    """``loss = step(images, labels)``: one optimizer update.

    With ``accumulate`` N > 1 the step is not called itself: ``AccumulateStep(step)(images, labels)``
    adds every batch's gradients into ``grad_accum.*`` and ``ApplyAccumulated(step)(loss)`` makes the
    update after each N-th. Graph mode gets two branch-free graphs sharing every Parameter, and only
    one of them runs a forward/backward pass (~10-15 s less compilation on CPU than a second graph
    that also adds the N-th batch).

    EMA weights are Parameters named ``ema.<param>`` (MindCV's naming), so they are saved
    and restored with the checkpoint like any other tensor.
    """

    def __init__(self, net: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, *, loss_scale: float = 1.0,
                 dynamic_loss_scale: bool = False, drop_overflow_update: bool = False, clip_grad: bool = False,
                 clip_value: float = 15.0, ema_decay: Optional[float] = None, accumulate: int = 1,
                 grad_reducer: Optional[nn.Cell] = None, scale_window: int = 2000,
                 ema_exclude: Sequence[str] = ()) -> None:
        super().__init__(auto_prefix=False)
        self.net_with_loss = NetWithLoss(net, loss_fn)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.hyper_map = C.HyperMap()
        self.loss_scale = Parameter(Tensor(loss_scale, ms.float32), name="scale_sense", requires_grad=False)
        self.dynamic = dynamic_loss_scale
        self.check_overflow = dynamic_loss_scale or drop_overflow_update
        self.scale_window = scale_window
        self.good_steps = Parameter(Tensor(0, ms.int32), name="optimizer.loss_scale_good_steps",
                                    requires_grad=False)
        self.clip_grad = clip_grad
        self.clip_value = clip_value
        self.use_ema = ema_decay is not None
        if self.use_ema:
            self.ema_decay = ema_decay
            # frozen layers have no EMA copy: their weights never change, and a copy could differ by an ulp
            self.all_weights = ParameterTuple([p for p in net.get_parameters() if p.name not in set(ema_exclude)])
            self.ema_weights = self.all_weights.clone(prefix="ema", init="same")
            self.ema_updates = Parameter(Tensor(0.0, ms.float32), name="ema.updates", requires_grad=False)
        self.accumulate = accumulate
        if accumulate > 1:
            # not "accum": nn.SGD names its momentum slots accum.<param>
            self.accum = self.weights.clone(prefix=GRAD_ACCUM_PREFIX.rstrip("."), init="zeros")
            self.inv_accumulate = Tensor(1.0 / accumulate, ms.float32)
        self.reducer = grad_reducer
        self.use_reducer = grad_reducer is not None

    def __call__(self, *args, **kwargs):
        if self.accumulate > 1:  # the update would ignore the sums: say so instead of training wrong
            raise RuntimeError("TrainStep(accumulate > 1) is not called itself: call AccumulateStep(step) on every "
                               "batch and ApplyAccumulated(step) after every accumulate-th")
        return super().__call__(*args, **kwargs)

    def construct(self, images, labels):
        # One forward pass gives loss and gradients (a separate forward would update BN statistics twice).
        (_, loss), grads = ops.value_and_grad(self.net_with_loss, None, self.weights, has_aux=True)(
            images, labels, self.loss_scale)
        return self.update(grads, loss)

    def update(self, grads, loss):
        """All-reduce, unscale, clip, check overflow, apply (then zero the sums, update EMA); returns ``loss``."""
        if self.use_reducer:
            grads = self.reducer(grads)
        grads = self.hyper_map(F.partial(_unscale, 1.0 / self.loss_scale), grads)
        if self.clip_grad:
            grads = ops.clip_by_global_norm(grads, self.clip_value)
        if self.check_overflow:
            finite = ms.amp.all_finite(grads)
            if self.dynamic:
                self._update_scale(finite)
            if finite:
                loss = self._apply(grads, loss)
        else:
            loss = self._apply(grads, loss)
        return loss

    def _apply(self, grads, loss):
        loss = F.depend(loss, self.optimizer(grads))
        if self.accumulate > 1:
            loss = F.depend(loss, self.hyper_map(_zero, self.accum))
        if self.use_ema:
            loss = F.depend(loss, F.assign_add(self.ema_updates, 1.0))
            # MindCV's warm-up of the decay: early averages are not dominated by random init.
            decay = self.ema_decay * (1.0 - ops.exp(-self.ema_updates / 2000.0))
            loss = F.depend(loss, self.hyper_map(F.partial(_ema_update, decay), self.ema_weights, self.all_weights))
        return loss

    def _update_scale(self, finite):
        if finite:
            good = self.good_steps + 1
            grow = good >= self.scale_window
            F.assign(self.loss_scale, ops.select(grow, self.loss_scale * 2.0, self.loss_scale))
            F.assign(self.good_steps, ops.select(grow, F.zeros_like(good), good))
        else:
            F.assign(self.loss_scale, ops.maximum(self.loss_scale / 2.0, 1.0))
            F.assign(self.good_steps, F.zeros_like(self.good_steps))


class ApplyAccumulated(nn.Cell):
    """``loss = apply(loss)``: ``step``'s update from the mean of its ``grad_accum.*`` sums (no forward pass).

    Called after every N-th ``AccumulateStep``; ``loss`` (the last batch's) is passed through.
    """

    def __init__(self, step: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.step = step
        self.hyper_map = C.HyperMap()

    def construct(self, loss):
        grads = self.hyper_map(F.partial(_unscale, self.step.inv_accumulate), self.step.accum)
        return self.step.update(grads, loss)


class AccumulateStep(nn.Cell):
    """Forward/backward that only adds the (scaled) gradients into the step's ``accum.*`` buffers."""

    def __init__(self, step: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.net_with_loss = step.net_with_loss
        self.weights = step.weights
        self.accum = step.accum
        self.loss_scale = step.loss_scale
        self.hyper_map = C.HyperMap()

    def construct(self, images, labels):
        (_, loss), grads = ops.value_and_grad(self.net_with_loss, None, self.weights, has_aux=True)(
            images, labels, self.loss_scale)
        return F.depend(loss, self.hyper_map(_accumulate, self.accum, grads))
