"""The error family: what can go wrong for a user, and the exit status each maps to.

Standard library only, so every module (the config schema included) raises these without
importing MindSpore, and the command line catches one base class. Each module re-exports the
errors it raises (``from mindcv_mnv2.config import ConfigError`` keeps working).

Exit statuses of train.py / validate.py: 0 done, 2 a user error (one line naming the culprit and
the fix), 3 training diverged (NaN/Inf loss), 130 interrupted after saving a resumable checkpoint.
"""
from __future__ import annotations

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class MnV2Error(Exception):
    """Base of every error this toolkit reports to people instead of a stack trace."""

    exit_code = 1


class UserError(MnV2Error, ValueError):
    """The input is wrong (recipe, data, checkpoint, launch, build); the message names the fix."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """A mistake in a recipe or on the command line; the message names key and fix."""


class DataError(UserError):
    """A dataset that cannot be used as given (layout, files, sizes)."""


class CheckpointError(UserError):
    """A checkpoint cannot be written, read or loaded; the message names the file and the fix."""


class DistributedError(UserError):
    """A launch or process-group problem (wrong launcher, world size, a rank that cannot join)."""


class KernelBuildError(UserError):
    """The C++ depthwise kernel could not be compiled or loaded."""


class UnknownModelError(UserError):
    """A model name that is not in the registry."""


class ExportError(UserError):
    """An export request that cannot be met (format, size, output path)."""


class PredictError(UserError):
    """A bad prediction request (labels, paths, sizes)."""


class PlotError(UserError):
    """A run directory or output path the plot command cannot use."""


class TrainingDiverged(MnV2Error, RuntimeError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""

    exit_code = EXIT_DIVERGED


class Interrupted(MnV2Error, RuntimeError):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written."""

    exit_code = EXIT_INTERRUPTED


def require_writable_dir(folder: str, what: str, error: type = UserError) -> None:
    """Create ``folder`` (and parents); raise ``error`` naming ``what`` (a key or flag) if it cannot be written."""
    import os

    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise error(f"{what}: cannot create the folder '{folder}' ({exc.strerror}); choose a writable folder") from None
    if not os.access(folder, os.W_OK):
        raise error(f"{what}: the folder '{folder}' is not writable; choose a writable folder")
