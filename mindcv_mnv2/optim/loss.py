"""Classification losses for hard (int) or soft (mixup/cutmix) labels."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class _SmoothedTargets(nn.Cell):
    """Shared part: hard labels become smoothed one-hot targets; soft labels pass through."""

    def __init__(self, num_classes: int, smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.on_value = ms.Tensor(1.0 - smoothing + smoothing / num_classes, ms.float32)
        self.off_value = ms.Tensor(smoothing / num_classes, ms.float32)
        self.reduction = reduction

    def targets(self, labels):
        if labels.ndim == 1:
            return ops.one_hot(labels, self.num_classes, self.on_value, self.off_value)
        return labels  # soft labels already carry any smoothing (data.mixup folds it in)

    def reduce(self, loss):
        return loss.mean() if self.reduction == "mean" else loss.sum()


class CrossEntropySmooth(_SmoothedTargets):
    """Softmax cross-entropy with label smoothing; accepts class indices or soft targets.

    MindSpore's ``ops.cross_entropy``, the op MindCV's CrossEntropySmooth calls: with the same
    init, data and recipe, training here and in MindCV 0.3.0 gives the same losses and weights bit
    for bit (bench/bench_vs_mindcv_steps.py). A smoothed one-hot times log-softmax is the same
    function but differs by an ulp, which ReLU6 kinks amplify within a few steps.
    """

    def __init__(self, num_classes: int, smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(num_classes, smoothing, reduction)
        self.smoothing = float(smoothing)

    def construct(self, logits, labels):
        logits = ops.cast(logits, ms.float32)  # fp32 loss under AMP too
        if labels.ndim == 1:
            return ops.cross_entropy(logits, labels, reduction=self.reduction, label_smoothing=self.smoothing)
        # soft labels (mixup/cutmix) already carry any smoothing (data.mixup folds it in)
        return ops.cross_entropy(logits, labels, reduction=self.reduction)


class BinaryCrossEntropySmooth(_SmoothedTargets):
    """Sigmoid binary cross-entropy over one-hot (smoothed) or soft targets."""

    def construct(self, logits, labels):
        logits = ops.cast(logits, ms.float32)
        ones = ops.ones_like(logits)
        loss = ops.binary_cross_entropy_with_logits(logits, self.targets(labels), ones, ones, reduction="none")
        return self.reduce(loss.mean(-1))


def create_loss(name: str, num_classes: int, label_smoothing: float = 0.0, reduction: str = "mean") -> nn.Cell:
    """Build the loss named by the recipe key ``loss`` (CE or BCE)."""
    if name == "CE":
        return CrossEntropySmooth(num_classes, label_smoothing, reduction)
    if name == "BCE":
        return BinaryCrossEntropySmooth(num_classes, label_smoothing, reduction)
    raise ValueError(f"loss: unknown '{name}', choose CE or BCE")
