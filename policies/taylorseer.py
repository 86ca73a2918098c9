"""TaylorSeer (Liu et al. 2025, arXiv 2503.06923; official code Shenyi-Z/TaylorSeer; peer: diffusers
TaylorSeerCacheConfig), as a policy of the runtime: the runtime's forecasting reuse on diffusers' refresh rule.

Per branch: FULL while the step is below `warmup`, and where (step - warmup - 1) % interval == 0 (diffusers'
rule, its `disable_cache_before_step` and `cache_interval`); in between, the block-stack residual is forecast
from the last FULL residuals (the runtime's STEP_F<order>), of a lower order while fewer are kept, as diffusers
does after its first updates.

What is forecast, and how, is the runtime's, so it can differ from other implementations:
- the block-stack residual of each branch (diffusers' lite mode forecasts `proj_out`'s output; the official code
  each block's attention and FFN outputs);
- Newton's polynomial through the last order + 1 residuals. For order 1 that is TaylorSeer's own first-order
  expansion; for order 2 TaylorSeer's expansion weights the second difference by d^2 / 2 where the polynomial
  through the three points weights it by d (d + D) / 2 (d: steps since the last FULL, D: the FULL interval).
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.runtime import FULL, STEP, Action, Signals
from cachepilot.runtime.forecast import BASES

from .base import BasePolicy


@dataclass
class TaylorSeerConfig:
    interval: int = 5  # one FULL every `interval` steps after the warm-up (diffusers' cache_interval)
    order: int = 1  # forecast order (diffusers' max_order)
    warmup: int = 3  # FULL steps before any forecast (diffusers' disable_cache_before_step)
    basis: str = "step"  # the time forecasts run in (TaylorSeer and diffusers count steps)

    def __post_init__(self):
        self.interval = checks.count("TaylorSeer interval", self.interval)
        self.order = checks.count("TaylorSeer order", self.order, low=0)
        self.warmup = checks.count("TaylorSeer warm-up", self.warmup, low=0)
        if self.basis not in BASES:
            raise InvalidInputError(f"TaylorSeer basis must be one of {', '.join(BASES)}, got {self.basis!r}")

    def computes(self, step: int) -> bool:
        return step < self.warmup or (step - self.warmup - 1) % self.interval == 0


class TaylorSeerCache(BasePolicy):
    name = "taylorseer"
    signals = frozenset()

    def __init__(self, config: TaylorSeerConfig | None = None, **overrides):
        self.config = config or TaylorSeerConfig(**overrides)
        self.forecast_order, self.forecast_basis = self.config.order, self.config.basis

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        if self.config.computes(signals.step):
            return FULL
        for order in range(self.config.order, -1, -1):
            if STEP.forecasting(order) in valid:
                return STEP.forecasting(order)
        return FULL
