"""A graceful stop: SIGTERM (a scheduler's pre-emption, ``kill``) or Ctrl-C ends training at the next batch
boundary, after a checkpoint an exact ``--resume`` continues from, instead of losing the epoch so far.

A second Ctrl-C stops at once (Python's default), for when the checkpoint itself is the problem.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """Training ended early on a signal, its state checkpointed; ``exit_code`` is the shell's 128 + signal."""

    def __init__(self, signum: int, where: str):
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT only set ``requested`` (the signal's number).

    Outside the main thread (signals cannot be caught there) it does nothing and ``requested`` stays None."""

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = signum
        log.warning("%s received: stopping after this batch, with a checkpoint (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
