"""The command line of train.py and validate.py: parse, run the engine, map failures to exit codes.

Exit codes (owned by mindcv_mnv2.errors): 0 done, 2 user error (config, data, checkpoint, launch),
3 training diverged (NaN/Inf loss), 130 interrupted by SIGINT/SIGTERM after saving a resumable
checkpoint. The console scripts ``mnv2-train`` and ``mnv2-validate`` (pyproject.toml) are these too.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from .config import Config, parse_args, resolve_model_defaults
from .errors import EXIT_USER_ERROR, ConfigError, MnV2Error

# OS errors that are user mistakes too (a path given on the command line that cannot be used)
_OS_USER_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def run(argv: Sequence[str], prog: str, job: Callable[[Config, argparse.Namespace], object],
        extra: Optional[Callable[[argparse.ArgumentParser], None]] = None, fill_model_defaults: bool = True) -> int:
    """Parse ``argv`` into a Config, run ``job(cfg, extras)`` and map failures to exit codes.

    ``fill_model_defaults=False`` (validate.py) leaves the eval keys for the checkpoint to fill.
    """
    from .models.registry import model_defaults

    try:
        cfg, extras = parse_args(argv, prog=prog, extra=extra,
                                 model_defaults=model_defaults if fill_model_defaults else None)
        if getattr(extras, "print_config", False):
            sys.stdout.write(resolve_model_defaults(cfg, model_defaults).to_yaml())
            return 0
    except ConfigError as exc:
        return _report(f"{prog}: error: {exc}", EXIT_USER_ERROR)
    try:
        job(cfg, extras)
    except MnV2Error as exc:
        head = f"{prog}: error:" if exc.exit_code in (EXIT_USER_ERROR, 3) else f"{prog}:"
        return _report(f"{head} {exc}", exc.exit_code)
    except _OS_USER_ERRORS as exc:
        return _report(f"{prog}: error: {exc}", EXIT_USER_ERROR)
    return 0


def _report(message: str, status: int) -> int:
    """One line on stderr, also kept in the run's log file when there is one."""
    message = " ".join(message.split())  # e.g. a compiler's multi-line output, kept but on one line
    print(message, file=sys.stderr)
    for handler in logging.getLogger("mindcv_mnv2").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.makeLogRecord({"msg": message, "levelname": "ERROR", "levelno": logging.ERROR}))
    return status


# ----------------------------------------------------------------------------- train.py
def _train(cfg: Config, extras: argparse.Namespace) -> object:
    from .engine.trainer import train

    return train(cfg, extras.explicit_keys)


def train_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """train.py: train from a recipe (see README); returns the exit status."""
    return run(sys.argv[1:] if argv is None else argv, prog or _prog("train.py"), _train)


# ----------------------------------------------------------------------------- validate.py
def _validate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_json", help="also write the metrics to this JSON file")
    parser.add_argument("--no_ema", action="store_true", help="score the raw weights even if EMA weights are stored")


def _validate(cfg: Config, extras: argparse.Namespace) -> object:
    from .engine.validation import validate

    return validate(cfg, use_ema=not getattr(extras, "no_ema", False), output_json=getattr(extras, "output_json", None),
                    explicit_keys=extras.explicit_keys)


def validate_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """validate.py: score a checkpoint or exported model exactly; returns the exit status."""
    return run(sys.argv[1:] if argv is None else argv, prog or _prog("validate.py"), _validate,
               extra=_validate_flags, fill_model_defaults=False)


def _prog(default: str) -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else default
    return name if name.startswith("mnv2-") else default  # console scripts name themselves
