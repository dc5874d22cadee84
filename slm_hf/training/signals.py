"""Stopping on request: SIGINT / SIGTERM, or the launcher's death, save a checkpoint after the current step, then stop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


class StopSignals:
    """SIGINT / SIGTERM ask the loop to save a checkpoint and stop after the current step; a second request stops now.

    Ctrl-C in a terminal sends SIGINT to every process of the foreground group: the training processes and their
    launcher, which then forwards its own SIGTERM (`accelerate launch`, `torchrun`) to them. Signals that arrive
    within `grace_s` seconds of the first are that same request; a later one (a second Ctrl-C) stops at once.

    A launcher killed without forwarding anything (SIGKILL, the OOM killer) leaves its training processes behind:
    `torchrun` starts each in a session of its own, so no terminal or process-group signal reaches them either.
    Given `launcher_pid` (the parent that started this process), `requested()` notices when this process has been
    handed to another parent and makes it the same request as a SIGTERM: the run saves a checkpoint and stops at the
    end of the step, rather than training on with nobody to stop it.
    """

    def __init__(self, say: Callable[[str], None] = print, grace_s: float = 2.0, launcher_pid: int | None = None):
        self.received: str | None = None
        self.say = say
        self.grace_s = grace_s
        self.launcher_pid = launcher_pid
        self._first_at = 0.0
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def requested(self) -> str | None:
        """The name of the stop request received so far ("SIGINT", "SIGTERM"), or None: checked once per step."""
        if self.received is None and self.launcher_pid is not None and os.getppid() != self.launcher_pid:
            self._request("SIGTERM")
            self.say(f"the launcher (pid {self.launcher_pid}) is gone: saving a checkpoint after this step, "
                     f"then stopping")
        return self.received

    def _handle(self, signum, frame):
        if self.received is not None:
            if time.monotonic() - self._first_at < self.grace_s:
                return  # the launcher forwarding the same Ctrl-C
            raise KeyboardInterrupt
        self._request(signal.Signals(signum).name)
        self.say(f"{self.received}: saving a checkpoint after this step, then stopping (again to stop at once)")

    def _request(self, name: str) -> None:
        self.received = name
        self._first_at = time.monotonic()

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
