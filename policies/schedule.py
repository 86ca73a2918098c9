"""Fixed step-level schedules: the same actions for every prompt, or one list per sample of the batch
(tests, benchmarks, oracle replays)."""

from __future__ import annotations

from collections.abc import Sequence

from cachepilot.runtime import FULL, STEP, Action, Signals

from .base import BasePolicy, block_layout


def _actions(actions: Sequence[Action | str]) -> tuple[Action, ...]:
    return tuple(a if isinstance(a, Action) else Action.parse(a) for a in actions)


def full_steps_schedule(num_steps: int, full_steps, reuse: Action = STEP) -> list[Action]:
    """FULL at `full_steps`, `reuse` everywhere else."""
    full = set(full_steps)
    return [FULL if s in full else reuse for s in range(num_steps)]


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
        n_full = max(2, round(computed_fraction * num_steps))
        return cls(full_steps_schedule(num_steps, {round(i * (num_steps - 1) / (n_full - 1)) for i in range(n_full)}, reuse),
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
