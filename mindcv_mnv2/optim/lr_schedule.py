"""Per-step learning-rate arrays: the only place where epochs become optimizer steps.

Semantics follow MindCV's scheduler factory: a linear warmup of ``warmup_epochs`` from
``lr * warmup_factor`` to ``lr``, then the main schedule over the remaining epochs. Unlike
MindCV, every duration may be fractional (TF-slim decays x0.98 every 2.5 epochs), and
exponential_decay honours ``decay_epochs`` (MindCV's ignores it, i.e. decay_epochs = 1).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..constants import SCHEDULERS


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Convert a duration in (possibly fractional) epochs to a whole number of steps."""
    return int(round(epochs * steps_per_epoch))


def create_lr_schedule(scheduler: str, lr: float, steps_per_epoch: int, epochs: int, *,
                       warmup_epochs: float = 0.0, warmup_factor: float = 0.0, min_lr: float = 0.0,
                       decay_epochs: float = 1.0, decay_rate: float = 0.9,
                       milestones: Sequence[float] = (), lr_epoch_stair: bool = False,
                       num_cycles: int = 1, cycle_decay: float = 1.0) -> np.ndarray:
    """One float32 learning rate per optimizer step for ``epochs`` epochs.

    Recipe keys map one to one: scheduler, lr, warmup_epochs, warmup_factor, min_lr,
    decay_epochs, decay_rate, multi_step_decay_milestones -> milestones, lr_epoch_stair,
    num_cycles, cycle_decay; ``steps_per_epoch`` counts optimizer updates per epoch.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler: unknown '{scheduler}', choose one of {', '.join(SCHEDULERS)}")
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"need steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch}, {epochs}")
    total = steps_per_epoch * epochs
    warmup = min(epochs_to_steps(warmup_epochs, steps_per_epoch), total)
    step = np.arange(total, dtype=np.float64)
    if lr_epoch_stair:  # the LR of an epoch is the LR of its first step
        step = np.floor(step / steps_per_epoch) * steps_per_epoch

    out = np.empty(total, dtype=np.float64)
    if warmup:
        frac = np.minimum(step[:warmup] / warmup, 1.0)
        out[:warmup] = lr * (warmup_factor + (1.0 - warmup_factor) * frac)
    t = (step[warmup:] - warmup) / steps_per_epoch  # epochs since the end of warmup
    t = np.maximum(t, 0.0)
    if scheduler == "constant":
        main = np.full_like(t, lr)
    elif scheduler == "cosine_decay":
        cycle = np.floor(t / decay_epochs)
        t_cur = t - cycle * decay_epochs
        peak = lr * cycle_decay ** cycle
        main = min_lr + 0.5 * (peak - min_lr) * (1.0 + np.cos(math.pi * t_cur / decay_epochs))
        main = np.where(cycle >= num_cycles, min_lr, main)
    elif scheduler == "exponential_decay":
        main = lr * decay_rate ** (t / decay_epochs)
    elif scheduler == "step_decay":
        # Whole decay periods, counted in steps so that 2.5-epoch periods are exact.
        period = max(epochs_to_steps(decay_epochs, steps_per_epoch), 1)
        main = lr * decay_rate ** np.floor(np.round(t * steps_per_epoch) / period)
    else:  # multi_step_decay
        passed = np.zeros_like(t)
        for m in milestones:
            passed += np.round(t * steps_per_epoch) >= epochs_to_steps(m, steps_per_epoch)
        main = lr * decay_rate ** passed
    out[warmup:] = main
    return out.astype(np.float32)
