"""Ctrl-C and SIGTERM during training: stop after the current optimizer step, with a resumable checkpoint."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)


class StopRequest:
    """SIGINT / SIGTERM handlers that ask the training to stop after the current optimizer step (the
    `ResumeCheckpoint` callback then writes a resumable checkpoint). A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: stopping after the current step and writing a resumable checkpoint "
                       "(Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


__all__ = ["StopRequest"]
