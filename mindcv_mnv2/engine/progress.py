"""Logs for people and machines: tqdm bars, a log file, one summary line per epoch, JSON lines."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, Iterator, Optional

LOGGER_NAME = "mindcv_mnv2"


def interactive() -> bool:
    """True when a person watches stderr (bars are drawn only then, so CI logs stay clean)."""
    return sys.stderr.isatty() and os.environ.get("MNV2_NO_BARS") != "1"


class _NoBar:
    visible = False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar when interactive and enabled, else a silent stand-in."""
    if not (enabled and interactive()):
        yield _NoBar()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, unit="step")
    bar.visible = True
    try:
        yield bar
    finally:
        bar.close()


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (it may be replaced, e.g. by test capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(run_dir: Optional[str], rank: int = 0, world: int = 1) -> logging.Logger:
    """Console output on rank 0, and a log file per rank in the run directory."""
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if rank == 0:
        console = _StdoutHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        name = "train.log" if world == 1 else f"train_rank{rank}.log"
        fh = logging.FileHandler(os.path.join(run_dir, name))
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    return log


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def write(self, record: Dict[str, Any]) -> None:
        """Append a record with a wall-clock timestamp; non-finite floats become null."""
        if not self.path:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        clean["time"] = round(time.time(), 3)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")


def format_eta(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
