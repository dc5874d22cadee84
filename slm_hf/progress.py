"""A training run's progress as people read it: a live bar in a terminal, plain periodic lines in a log file.

The bar and the run's messages share one stream (standard output), so a message never lands in the middle of the
bar: in a terminal it is written above the bar (`tqdm.write`). Standard output, not standard error, because
`accelerate launch` pipes its child's standard error through itself: a bar there would not know it is shown in a
terminal. Where standard output is not a terminal (`> run.log`, `nohup`, CI), there is no bar and no carriage
return: a line of the form `step S/N (P%): loss L, lr R, T tok/s, M elapsed` every
`line_interval_s` seconds, and one at the last step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


class TrainingProgress:
    """The run's messages and, once `start`ed, the progress of its steps, on `stream` (standard output)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, line_interval_s: float = 30.0):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.interactive = enabled and _is_terminal(self.stream)
        self.line_interval_s = line_interval_s
        self.total = 0
        self.bar = None

    def start(self, total: int, initial: int = 0) -> None:
        """Start showing the steps `initial` (done before, when resuming) to `total`."""
        self.total = total
        self._started = self._last_line = time.perf_counter()
        self.bar = tqdm(
            total=total, initial=initial, disable=not self.interactive, unit="step", dynamic_ncols=True,
            file=self.stream,
        )

    def set_total(self, total: int) -> None:
        self.total = total
        self.bar.total = total
        self.bar.refresh()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        """Show that `step` is done, with the newest loss, learning rate and speed."""
        if self.interactive:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if self.enabled and (now - self._last_line >= self.line_interval_s or step >= self.total):
            self._last_line = now
            elapsed = int(now - self._started)
            self.write(
                f"step {step:,}/{self.total:,} ({100 * step / max(self.total, 1):.0f}%): loss {loss:.3f}, "
                f"lr {lr:.2e}, {tokens_per_s:,.0f} tok/s, {elapsed // 60}m{elapsed % 60:02d}s elapsed"
            )

    def write(self, message: str) -> None:
        """A message line: above the bar in a terminal, a plain line otherwise."""
        if not self.enabled:
            return
        if self.interactive:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def quiet_progress_bars():
    """Hide transformers' progress bars (e.g. "Loading weights") inside the block, as they were before after it."""
    from transformers.utils import logging as transformers_logging  # here: importing this module stays light

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["TrainingProgress", "quiet_progress_bars"]
