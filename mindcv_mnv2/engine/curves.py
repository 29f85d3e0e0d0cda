"""TensorBoard curves of a run: rank 0 writes scalars into ``<run_dir>/tensorboard`` with tensorboardX.

The trainer hands every metrics.jsonl record to :meth:`Curves.write` as well; the x axis of every
tag is the global optimizer step (the records' ``global_step``):

    train/loss        the logged step's own loss (TensorBoard's smoothing slider smooths it)
    train/lr          the learning rate that step's update used
    train/img_per_s   images/s since the epoch's first step (none for that step: it includes compilation)
    train/loss_scale  the dynamic loss scale after that step (loss_scale_type dynamic/auto only)
    val/top1, val/top5, val/loss   at every validation (accuracies in percent)
    epoch/time_s      wall time of the epoch's training steps (validation not included)

A resumed run opens a new event file whose ``purge_step`` is the resumed global step + 1, so
TensorBoard drops what an earlier writer logged after that checkpoint (a crash past it) and every
step is shown once.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger("mindcv_mnv2")
TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    """Whether tensorboardX can be imported (it is pinned in requirements.txt)."""
    import importlib.util

    return importlib.util.find_spec("tensorboardX") is not None


class Curves:
    """TensorBoard scalars of one run; every method does nothing when ``logdir`` is None."""

    def __init__(self, logdir: Optional[str], resumed_step: Optional[int] = None,
                 loss_scale: Optional[Callable[[], float]] = None) -> None:
        self.logdir = logdir
        self.purge_step = None if resumed_step is None else resumed_step + 1
        self._loss_scale = loss_scale
        self._writer: Any = None
        # Points before this step are already in the event files (a resumed run's checkpoint step),
        # and with gradient accumulation a batch that did not update shares the previous step.
        self._last_step = -1 if resumed_step is None else resumed_step

    def _get(self) -> Any:
        # Opened on the first record: a run that fails while starting leaves no empty event file.
        if self._writer is None:
            from tensorboardX import SummaryWriter

            # The pid in the file name: event files are named by the second they were opened in, and
            # two writers of one run opened within a second would otherwise share (truncate) one file.
            self._writer = SummaryWriter(self.logdir, purge_step=self.purge_step, flush_secs=30,
                                         filename_suffix=f".{os.getpid()}")
        return self._writer

    def _add(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            self._get().add_scalar(tag, float(value), step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Add the scalars of one metrics.jsonl record ("step" or "epoch"; other types are ignored)."""
        if not self.logdir:
            return
        kind, step = record.get("type"), record.get("global_step")
        if kind == "step" and step is not None and step > self._last_step:
            self._last_step = step
            self._add("train/loss", record.get("loss"), step)
            self._add("train/lr", record.get("lr"), step)
            if (record.get("img_per_s") or 0) > 0:  # 0 = not measured yet
                self._add("train/img_per_s", record["img_per_s"], step)
            if self._loss_scale is not None:
                self._add("train/loss_scale", self._loss_scale(), step)
        elif kind == "epoch" and step is not None:
            for key, tag in (("top1", "val/top1"), ("top5", "val/top5"), ("val_loss", "val/loss"),
                             ("epoch_time", "epoch/time_s")):
                self._add(tag, record.get(key), step)
            self.flush()

    def flush(self) -> None:
        """Write pending events to disk (called at every epoch end)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; the trainer calls it however the run ends."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001  (the curves must never hide why training stopped)
                log.warning("could not close the TensorBoard event file in %s: %s", self.logdir, exc)
