"""Batch-level Mixup / CutMix on soft labels (timm's "batch" mode).

One lambda per batch; each image is mixed with its partner in the reversed batch. Label
smoothing is folded into the soft labels, so the loss must not smooth them again.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .folder import DataError


def one_hot_smooth(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """float32 [B, num_classes] one-hot rows with ``smoothing`` spread over all classes."""
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, dtype=np.float32)
    out[np.arange(len(labels)), labels.astype(np.int64)] = 1.0 - smoothing + off
    return out


class Mixup:
    """timm-style Mixup/CutMix for NCHW numpy batches with integer labels -> soft labels."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.0,
                 seed: Optional[int] = None):
        if num_classes is None or int(num_classes) < 1:
            raise DataError("num_classes must be given (a positive integer) when mixup or cutmix is on")
        for name, v in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)):
            if v < 0:
                raise DataError(f"{name} alpha {v} must be >= 0 (0 = off)")
        for name, v in (("cutmix_prob", prob), ("mixup_switch_prob", switch_prob)):
            if not 0 <= v <= 1:
                raise DataError(f"{name} {v} must be a probability within [0, 1]")
        if not 0 <= label_smoothing < 1:
            raise DataError(f"label_smoothing {label_smoothing} must be within [0, 1)")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.smoothing = float(prob), float(switch_prob), float(label_smoothing)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (the loader seeds it per shard)."""
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Tuple[float, bool]:
        """(lambda, use_cutmix) for the next batch."""
        rng = self.rng
        if rng.random() >= self.prob or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def _cut_box(self, h: int, w: int, lam: float) -> Tuple[int, int, int, int]:
        cut = math_sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
        y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
        x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
        return int(y0), int(y1), int(x0), int(x1)

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Mix an NCHW batch; return (images, float32 soft labels [B, num_classes])."""
        lam, use_cutmix = self.sample()
        if lam < 1.0:
            if use_cutmix:
                h, w = images.shape[-2:]
                y0, y1, x0, x1 = self._cut_box(h, w, lam)
                mixed = images.copy()
                mixed[..., y0:y1, x0:x1] = images[::-1, ..., y0:y1, x0:x1]
                images = mixed
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the box was clipped: use its true area
            else:
                images = (images * np.float32(lam) + images[::-1] * np.float32(1.0 - lam)).astype(images.dtype)
        y1h = one_hot_smooth(labels, self.num_classes, self.smoothing)
        soft = y1h * np.float32(lam) + y1h[::-1] * np.float32(1.0 - lam)
        return images, soft.astype(np.float32)


def math_sqrt(x: float) -> float:
    """sqrt clamped at 0 (lambda can round to slightly above 1)."""
    return float(np.sqrt(max(0.0, x)))
