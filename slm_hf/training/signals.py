"""Stopping on request: SIGINT / SIGTERM save a checkpoint after the current step, then stop."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable


class StopSignals:
    """SIGINT / SIGTERM ask the loop to save a checkpoint and stop after the current step; a second request stops now.

    Ctrl-C in a terminal sends SIGINT to every process of the foreground group: the training processes and their
    launcher, which then forwards its own SIGTERM (`accelerate launch`, `torchrun`) to them. Signals that arrive
    within `grace_s` seconds of the first are that same request; a later one (a second Ctrl-C) stops at once.
    """

    def __init__(self, say: Callable[[str], None] = print, grace_s: float = 2.0):
        self.received: str | None = None
        self.say = say
        self.grace_s = grace_s
        self._first_at = 0.0
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            if time.monotonic() - self._first_at < self.grace_s:
                return  # the launcher forwarding the same Ctrl-C
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self._first_at = time.monotonic()
        self.say(f"{self.received}: saving a checkpoint after this step, then stopping (again to stop at once)")

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
