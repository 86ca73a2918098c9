"""Fixed step-level schedules: the same actions for every prompt, or one list per sample of the batch
(tests, benchmarks, oracle replays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cachepilot.runtime import FULL, STEP, Action, Signals

from .base import BasePolicy, block_layout


def _actions(actions: Sequence[Action | str]) -> tuple[Action, ...]:
    return tuple(a if isinstance(a, Action) else Action.parse(a) for a in actions)


def evenly_spaced(num_steps: int, count: int) -> set[int]:
    """`count` steps spread evenly over the generation, the first and (for two or more) the last included."""
    return {round(i * (num_steps - 1) / (count - 1)) for i in range(count)} if count > 1 else {0}


def uniform_full_steps(num_steps: int, fraction: float) -> set[int]:
    """The steps a uniform schedule computes: `fraction` of them (at least two), evenly spaced."""
    return evenly_spaced(num_steps, max(2, round(fraction * num_steps)))


def full_steps_schedule(num_steps: int, full_steps, reuse: Action = STEP) -> list[Action]:
    """FULL at `full_steps`, `reuse` everywhere else."""
    full = set(full_steps)
    return [FULL if s in full else reuse for s in range(num_steps)]


def resample_schedule(schedule: Sequence[Action], num_steps: int, fulls: int) -> list[Action]:
    """A step-level schedule carried to `num_steps` steps with `fulls` FULL steps, by the fraction of the generation
    (a fixed function of the noise level for a given scheduler shift): the FULL steps placed where the source's FULL
    steps of the same rank fall (interpolated between them when there are more or fewer to place), and each reuse
    the kind of the nearest source reuse."""
    source = _actions(schedule)
    n0, full_at = len(source), [i for i, a in enumerate(source) if a == FULL]
    if not full_at or n0 < 2 or num_steps < 1:
        raise ValueError("a schedule to resample has at least two steps and a FULL one")
    fulls = max(1, min(int(fulls), num_steps))
    # the source's FULL fractions as a function of the FULL's rank in [0, 1], read at the target's ranks
    ranks = [k / (len(full_at) - 1) for k in range(len(full_at))] if len(full_at) > 1 else [0.0]
    wanted = [float(np.interp(k / (fulls - 1), ranks, [i / (n0 - 1) for i in full_at])) if fulls > 1 else 0.0
              for k in range(fulls)]
    steps, prev = [], -1
    for k, fraction in enumerate(wanted):  # strictly increasing, leaving room for the FULL steps still to place
        prev = min(max(round(fraction * (num_steps - 1)), prev + 1), num_steps - fulls + k)
        steps.append(prev)
    reuses = [i for i, a in enumerate(source) if a.reuses] or [None]
    out, computed = [], 0
    for step in range(num_steps):
        if step in steps:
            out.append(FULL)
            computed += 1
            continue
        at = step / max(num_steps - 1, 1) * (n0 - 1)
        nearest = min(reuses, key=lambda i: abs(i - at)) if reuses[0] is not None else None
        action = source[nearest] if nearest is not None else STEP
        # a forecast of order n extrapolates n + 1 kept values: lower it where fewer FULL steps came before
        out.append(action.forecasting(min(action.forecast, computed - 1)) if action.forecast else action)
    return out


class FixedSchedule(BasePolicy):
    """actions[step] is the step-level action of every step (CFG: cond computes, uncond is rebuilt).

    With `forecast` > 0 each reuse of the table forecasts, with the highest order up to `forecast` that the kept
    history allows (lower right after the first FULL steps, as TaylorSeer does)."""

    name = "schedule"
    step_level = True
    signals = frozenset()

    def __init__(self, actions: Sequence[Action | str], forecast_basis: str = "step", forecast: int = 0):
        self.table = (_actions(actions),)
        self.block_ks, self.back_blocks, self.forecast_order = block_layout(self.table[0])
        self.forecast_basis, self.forecast_up_to = forecast_basis, int(forecast)
        self.forecast_order = max(self.forecast_order, self.forecast_up_to)

    @property
    def actions(self) -> tuple[Action, ...]:
        return self.table[0]

    @classmethod
    def per_sample(cls, schedules: Sequence[Sequence[Action | str]], forecast_basis: str = "step") -> "FixedSchedule":
        """Sample i of the batch follows schedules[i]."""
        policy = cls.__new__(cls)
        policy.table = tuple(_actions(s) for s in schedules)
        policy.block_ks, policy.back_blocks, policy.forecast_order = block_layout(a for s in policy.table for a in s)
        policy.forecast_basis, policy.forecast_up_to = forecast_basis, 0
        return policy

    @classmethod
    def uniform(cls, num_steps: int, computed_fraction: float, reuse: Action = STEP, forecast: int = 0,
                forecast_basis: str = "step") -> "FixedSchedule":
        """FULL on evenly spaced steps (first and last included) covering `computed_fraction` of the steps."""
        return cls(full_steps_schedule(num_steps, uniform_full_steps(num_steps, computed_fraction), reuse),
                   forecast_basis, forecast)

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        table = self.table[signals.sample] if len(self.table) > 1 else self.table[0]
        if signals.step >= len(table):
            raise IndexError(f"schedule has {len(table)} steps; step {signals.step} requested")
        action = table[signals.step]
        for order in range(self.forecast_up_to, 0, -1) if action.reuses else ():
            if action.forecasting(order) in valid:
                return action.forecasting(order)
        return action
