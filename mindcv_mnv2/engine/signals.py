"""Stopping a run cleanly: SIGINT/SIGTERM are noted, and the training loop saves at the next step."""
from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Records the first SIGINT/SIGTERM; ``install()`` again after MindSpore has put its own handlers on.

    MindSpore's runtime installs SIGINT/SIGTERM handlers when it starts executing (they end the
    process at once), and its SignalGuard passes a Ctrl-C that arrives while a graph runs on as
    SIGTERM; the first signal received names the stop.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _note(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handler signature
        if self.received is None:
            self.received = signum

    def install(self) -> None:
        """Put the handlers on (main thread only); the first call remembers what they replace."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s in STOP_SIGNALS:
            old = signal.signal(s, self._note)
            self._previous.setdefault(s, old)

    def restore(self) -> None:
        """Give the handlers back to whoever had them before the first ``install()``."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    @property
    def name(self) -> str:
        """SIGINT / SIGTERM, for the message."""
        return signal.Signals(self.received).name if self.received is not None else ""
