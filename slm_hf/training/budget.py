"""`max_minutes`: the number of steps that fits in a time budget, refitted to the measured speed as the run goes.

With a time budget, max_steps is fitted after 10 steps, at the end of warmup, then at every evaluation (a shared
machine's speed varies). The learning rate depends on max_steps only after warmup, so the first fits change nothing
before; later ones stretch or shrink the rest of the schedule.
"""

from __future__ import annotations

import math

import numpy as np

from .config import TrainingConfig


class TimeBudget:
    def __init__(self, config: TrainingConfig):
        self.config = config
        self.seconds = config.max_minutes * 60
        self.warmup_end = max(10, math.ceil(config.warmup_steps))

    def fits_now(self, step: int, max_steps: int, evaluate_now: bool) -> bool:
        """Whether max_steps is refitted after `step`."""
        if step >= max_steps:
            return False
        return step in (10, self.warmup_end) or (step > self.warmup_end and evaluate_now)

    def refit(self, step: int, elapsed: float, step_times: list[float], eval_time: float) -> int:
        """The max_steps that fits in what is left of the budget (`elapsed` seconds are spent), at the speed of the
        recent steps (the first ones are slow: memory, kernels warming up), with evaluations at their measured cost."""
        recent = max(min(len(step_times) // 2, self.config.eval_interval), 1)
        step_time = float(np.median(step_times[-recent:]))
        return fit_budget(step, self.config, self.seconds - elapsed, step_time, eval_time)

    def used_up(self, elapsed: float) -> bool:
        return elapsed > self.seconds


def fit_budget(step: int, config: TrainingConfig, seconds_left: float, step_time: float, eval_time: float) -> int:
    """The last step that fits in `seconds_left`, given the measured time of a step and of an evaluation.

    Each remaining step costs its own time plus its share of the evaluations, and the last step is followed by a
    final evaluation. (Writing the model folders and their cards comes after the budget.)
    """
    per_step = step_time + eval_time / config.eval_interval
    return max(step, min(config.max_steps, step + int((seconds_left - eval_time) / per_step)))
