"""The uniform schedule: FULL on evenly spaced steps (first and last included), and in between every step reused,
or forecast from the last FULL steps. No signal, no threshold: the simplest method that every learned or adaptive
cache has to beat at the same compute, with and without forecasts.

It reads the generation's step count when it decides, so one config serves every step count.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.runtime import FULL, STEP, Action, Signals
from cachepilot.runtime.forecast import BASES

from .base import BasePolicy
from .schedule import uniform_full_steps


@dataclass
class UniformConfig:
    fraction: float = 0.25  # share of the steps that compute
    order: int = 1  # forecast order of each reuse (0: the kept residual as it is); lower while fewer FULLs are kept
    basis: str = "step"  # the time forecasts run in

    def __post_init__(self):
        self.fraction = checks.budget(self.fraction, "uniform fraction")
        self.order = checks.count("uniform forecast order", self.order, low=0)
        self.basis = checks.choice("uniform forecast basis", self.basis, BASES)


class UniformCache(BasePolicy):
    name = "uniform"
    step_level = True
    signals = frozenset()

    def __init__(self, config: UniformConfig | None = None, **overrides):
        self.config = config or UniformConfig(**overrides)
        self.forecast_order, self.forecast_basis = self.config.order, self.config.basis
        self._full: tuple[int, set[int]] | None = None  # (num_steps, its FULL steps)

    def full_steps(self, num_steps: int) -> set[int]:
        if self._full is None or self._full[0] != num_steps:
            self._full = (num_steps, uniform_full_steps(num_steps, self.config.fraction))
        return self._full[1]

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        if not signals.num_steps:
            raise InvalidInputError("the uniform schedule needs the generation's step count; this pipeline does "
                                    "not say it (run it through cachepilot's generate or the pipeline's __call__)")
        if signals.step in self.full_steps(signals.num_steps):
            return FULL
        for order in range(self.config.order, 0, -1):
            if STEP.forecasting(order) in valid:
                return STEP.forecasting(order)
        return STEP
