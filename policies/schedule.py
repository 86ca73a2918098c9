"""A fixed step-level schedule: the same actions for every prompt (tests, benchmarks, oracle replays)."""

from __future__ import annotations

from collections.abc import Sequence

from cachepilot.runtime import CFG, FULL, STEP, Action, Signals

from .base import BasePolicy, block_layout


class FixedSchedule(BasePolicy):
    """actions[step] applies to both branches; CFG means: cond computes FULL, uncond is rebuilt."""

    name = "schedule"
    signals = frozenset()

    def __init__(self, actions: Sequence[Action | str]):
        self.actions = tuple(a if isinstance(a, Action) else Action.parse(a) for a in actions)
        self.block_ks, self.back_blocks = block_layout(self.actions)

    @classmethod
    def uniform(cls, num_steps: int, computed_fraction: float, reuse: Action = STEP) -> "FixedSchedule":
        """FULL on evenly spaced steps (first and last included) covering `computed_fraction` of the steps."""
        n_full = max(2, round(computed_fraction * num_steps))
        full = {round(i * (num_steps - 1) / (n_full - 1)) for i in range(n_full)}
        return cls([FULL if s in full else reuse for s in range(num_steps)])

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        if signals.step >= len(self.actions):
            raise IndexError(f"schedule has {len(self.actions)} steps; step {signals.step} requested")
        action = self.actions[signals.step]
        if action == CFG:
            return FULL if signals.branch == "cond" else CFG
        return action
