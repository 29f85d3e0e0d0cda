"""Shared command-line plumbing of train.py and validate.py: parse, report user errors, exit codes.

Exit codes: 0 done, 2 user error (config, data, checkpoint, launch), 3 training diverged
(NaN/Inf loss), 130 interrupted by SIGINT/SIGTERM after saving a resumable checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from .config import Config, ConfigError, parse_args

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def _user_errors() -> tuple:
    """Exception types that mean 'the input is wrong', printed as one line without a trace."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .distributed import DistributedError
    from .export import ExportError
    from .models import UnknownModelError

    return (ConfigError, CheckpointError, DataError, DistributedError, ExportError, UnknownModelError,
            FileNotFoundError, PermissionError)


def run(argv: Sequence[str], prog: str, job: Callable[[Config, argparse.Namespace], object],
        extra: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """Parse ``argv`` into a Config, run ``job(cfg, extras)`` and map failures to exit codes."""
    from .models.registry import model_defaults

    try:
        cfg, extras = parse_args(argv, prog=prog, extra=extra,
                                 model_defaults=None if prog == "validate.py" else model_defaults)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if getattr(extras, "print_config", False):
        from .config import resolve_model_defaults

        try:
            cfg = resolve_model_defaults(cfg, model_defaults)
        except ConfigError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        sys.stdout.write(cfg.to_yaml())
        return 0
    from .engine.trainer import Interrupted, TrainingDiverged

    try:
        job(cfg, extras)
    except _user_errors() as exc:
        return _report(f"{prog}: error: {exc}", EXIT_USER_ERROR)
    except TrainingDiverged as exc:
        return _report(f"{prog}: error: {exc}", EXIT_DIVERGED)
    except Interrupted as exc:
        return _report(f"{prog}: {exc}", EXIT_INTERRUPTED)
    return 0


def _report(message: str, status: int) -> int:
    """One line on stderr, also kept in the run's log file when there is one."""
    message = " ".join(message.split())  # e.g. a compiler's multi-line output, kept but on one line
    print(message, file=sys.stderr)
    for handler in logging.getLogger("mindcv_mnv2").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.makeLogRecord({"msg": message, "levelname": "ERROR", "levelno": logging.ERROR}))
    return status
