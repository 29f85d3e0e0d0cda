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
        if self._writer is None and self.logdir:
            from tensorboardX import SummaryWriter

            try:
                # The pid in the file name: event files are named by the second they were opened in, and
                # two writers of one run opened within a second would otherwise share (truncate) one file.
                # max_queue: room for many records, so the loop never waits for the writer thread
                self._writer = SummaryWriter(self.logdir, purge_step=self.purge_step, max_queue=1000,
                                             flush_secs=30, filename_suffix=f".{os.getpid()}")
            except Exception as exc:  # noqa: BLE001  (optional output: training goes on without it)
                log.warning("TensorBoard: cannot write event files in %s (%s); training goes on, metrics.jsonl "
                            "has every number", self.logdir, exc)
                self.logdir = None
        return self._writer

    def _add(self, values: Mapping[str, Any], step: int) -> None:
        """The finite values as one event: a Summary with a simple_value per tag (what add_scalar writes,
        one event per tag) costs half of four add_scalar calls (bench/bench_tensorboard.py)."""
        from tensorboardX.proto.summary_pb2 import Summary

        points = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        writer = self._get() if points else None
        if writer is not None:
            writer.file_writer.add_summary(Summary(value=points), global_step=step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Add the scalars of one metrics.jsonl record ("step" or "epoch"; other types are ignored)."""
        if not self.logdir:
            return
        kind, step = record.get("type"), record.get("global_step")
        if kind == "step" and step is not None and step > self._last_step:
            self._last_step = step
            values = {"train/loss": record.get("loss"), "train/lr": record.get("lr")}
            if (record.get("img_per_s") or 0) > 0:  # 0 = not measured yet
                values["train/img_per_s"] = record["img_per_s"]
            if self._loss_scale is not None:
                values["train/loss_scale"] = self._loss_scale()
            self._add(values, step)
        elif kind == "epoch" and step is not None:
            self._add({"val/top1": record.get("top1"), "val/top5": record.get("top5"),
                       "val/loss": record.get("val_loss"), "epoch/time_s": record.get("epoch_time")}, step)
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
