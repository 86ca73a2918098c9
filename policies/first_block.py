"""First-Block Cache (ParaAttention; peer: diffusers FirstBlockCacheConfig).

Always run block 0; if the rel-L1 change of its residual, against its value at the last full compute,
is below the threshold, reuse the residual of the remaining blocks (BLOCK_1), else run them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.runtime import FULL, Action, Signals

from .base import BasePolicy


@dataclass
class FirstBlockConfig:
    threshold: float = 0.05  # diffusers' default

    def __post_init__(self):
        self.threshold = checks.threshold("First-Block threshold", self.threshold)


class FirstBlockCache(BasePolicy):
    name = "first-block"
    signals = frozenset()
    probe_blocks = 1

    def __init__(self, config: FirstBlockConfig | None = None, **overrides):
        self.config = config or FirstBlockConfig(**overrides)
        self.block_ks = (1,)

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        reuse = Action.block(1)
        if signals.probe_rel_l1 is not None and signals.probe_rel_l1 <= self.config.threshold and reuse in valid:
            return reuse
        return FULL
