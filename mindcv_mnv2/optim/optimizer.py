"""Optimizers with weight-decay groups that do what their names say."""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.ops import functional as F

from ..constants import OPTIMIZERS
from ..constants import WEIGHT_DECAY_FILTERS as WD_FILTERS


def _is_norm(p: Parameter) -> bool:
    return p.name.endswith((".gamma", ".beta"))


def _is_bias(p: Parameter) -> bool:
    return p.name.endswith(".bias")


def weight_decay_groups(params: Sequence[Parameter], weight_decay: float, weight_decay_filter: str) -> List[Dict]:
    """Split parameters into decayed / not-decayed groups.

    disable: every parameter is decayed (MindSpore's implicit BN filter is bypassed on purpose);
    auto: BatchNorm gamma/beta are not decayed; norm_and_bias: neither BN parameters nor biases.
    """
    if weight_decay_filter not in WD_FILTERS:
        raise ValueError(f"weight_decay_filter: unknown '{weight_decay_filter}', choose one of {', '.join(WD_FILTERS)}")
    params = [p for p in params if p.requires_grad]
    if weight_decay_filter == "disable":
        skip = lambda p: False  # noqa: E731
    elif weight_decay_filter == "auto":
        skip = _is_norm
    else:
        skip = lambda p: _is_norm(p) or _is_bias(p)  # noqa: E731
    decay = [p for p in params if not skip(p)]
    no_decay = [p for p in params if skip(p)]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]] + [{"order_params": params}]


class _NesterovUpdate(nn.Cell):
    """``moment = momentum * moment + grad; weight -= lr * (grad + momentum * moment)`` with plain ops."""

    def construct(self, weight, moment, lr, gradient, momentum):
        new_moment = moment * momentum + gradient
        new_moment = F.depend(new_moment, F.assign(moment, new_moment))
        return F.assign_sub(weight, lr * (gradient + momentum * new_moment))


class NesterovMomentum(nn.Momentum):
    """nn.Momentum with Nesterov's update. MindSpore 2.10's CPU ApplyMomentum kernel ignores
    ``use_nesterov`` (measured: identical weights either way); slots keep nn.Momentum's names."""

    def __init__(self, params, learning_rate, momentum: float) -> None:
        super().__init__(params, learning_rate, momentum=momentum, use_nesterov=True)
        self.opt = _NesterovUpdate()


class FusedMomentum(nn.Momentum):
    """nn.Momentum (same slots, names, schedule and update) as one C++ operator per step (CPU only).

    nn.Momentum runs ~260 small kernels per MobileNetV2 step (an ApplyMomentum per parameter, a Mul
    and an AddN per decayed one); ops/momentum.cc makes the same update, element by element in
    the same order, in one.
    """

    def __init__(self, groups: List[Dict], learning_rate, momentum: float) -> None:
        super().__init__(groups, learning_rate, momentum=momentum)
        from ..ops.momentum import momentum_apply_all

        decay = {id(p): float(g.get("weight_decay", 0.0)) for g in groups for p in g.get("params", ())}
        self.decay_all = Tensor(np.array([decay[id(p)] for p in self._parameters], np.float32))
        self.apply_all = momentum_apply_all(len(self._parameters))

    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        return self.apply_all(lr, self.momentum, self.decay_all, *gradients, *self.params, *self.moments)


def create_optimizer(params: Sequence[Parameter], opt: str, lr: Union[float, np.ndarray], *, momentum: float = 0.9,
                     weight_decay: float = 0.0, weight_decay_filter: str = "disable", use_nesterov: bool = False,
                     eps: float = 1e-10, rmsprop_decay: float = 0.9, fused: bool = False) -> nn.Optimizer:
    """Build the optimizer named by the recipe key ``opt`` with a per-step LR array ``lr``.

    rmsprop has TensorFlow semantics (mean square initialised to 1, epsilon inside the root),
    which is how TF-slim trained MobileNetV2. ``fused`` (CPU with the C++ kernels): momentum
    without Nesterov runs as one operator (FusedMomentum); the other optimizers are unchanged.
    """
    groups = weight_decay_groups(params, weight_decay, weight_decay_filter)
    lr_t = Tensor(np.asarray(lr, np.float32)) if isinstance(lr, np.ndarray) else float(lr)
    if opt == "momentum":
        if use_nesterov:
            return NesterovMomentum(groups, lr_t, momentum)
        if fused:
            return FusedMomentum(groups, lr_t, momentum)
        return nn.Momentum(groups, lr_t, momentum=momentum)
    if opt == "sgd":
        return nn.SGD(groups, lr_t, momentum=momentum, nesterov=use_nesterov)
    if opt == "rmsprop":
        return nn.RMSProp(groups, lr_t, decay=rmsprop_decay, momentum=momentum, epsilon=eps)
    if opt == "adam":
        return nn.Adam(groups, lr_t, eps=eps, use_nesterov=use_nesterov)
    if opt == "adamw":
        return nn.AdamWeightDecay(groups, lr_t, eps=eps)
    raise ValueError(f"opt: unknown '{opt}', choose one of {', '.join(OPTIMIZERS)}")
