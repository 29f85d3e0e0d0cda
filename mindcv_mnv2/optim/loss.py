"""Classification losses for hard (int) or soft (mixup/cutmix) labels."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class CrossEntropySmooth(nn.Cell):
    """Softmax cross-entropy with label smoothing; accepts class indices or soft targets."""

    def __init__(self, num_classes: int, smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.reduction = reduction

    def construct(self, logits, labels):
        logits = ops.cast(logits, ms.float32)
        logp = ops.log_softmax(logits, -1)
        if labels.ndim == 1:  # hard labels: smoothing is applied here
            on = 1.0 - self.smoothing
            off = self.smoothing / self.num_classes
            target = ops.one_hot(labels, self.num_classes, ms.Tensor(on + off, ms.float32),
                                 ms.Tensor(off, ms.float32))
        else:  # soft labels already carry any smoothing (data.mixup folds it in)
            target = labels
        loss = -(target * logp).sum(-1)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class BinaryCrossEntropySmooth(nn.Cell):
    """Sigmoid binary cross-entropy over one-hot (smoothed) or soft targets."""

    def __init__(self, num_classes: int, smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.reduction = reduction

    def construct(self, logits, labels):
        logits = ops.cast(logits, ms.float32)
        if labels.ndim == 1:
            off = self.smoothing / self.num_classes
            target = ops.one_hot(labels, self.num_classes, ms.Tensor(1.0 - self.smoothing + off, ms.float32),
                                 ms.Tensor(off, ms.float32))
        else:
            target = labels
        loss = ops.binary_cross_entropy_with_logits(logits, target, ops.ones_like(logits), ops.ones_like(logits),
                                                    reduction="none").mean(-1)
        return loss.mean() if self.reduction == "mean" else loss.sum()


def create_loss(name: str, num_classes: int, label_smoothing: float = 0.0, reduction: str = "mean") -> nn.Cell:
    """Build the loss named by the recipe key ``loss`` (CE or BCE)."""
    if name == "CE":
        return CrossEntropySmooth(num_classes, label_smoothing, reduction)
    if name == "BCE":
        return BinaryCrossEntropySmooth(num_classes, label_smoothing, reduction)
    raise ValueError(f"loss: unknown '{name}', choose CE or BCE")
