"""DBCache (cache-dit): Fn front blocks always run and give the signal; the middle is reused while the
rel-L1 change of the Fn residual stays under the threshold, after a warm-up; the Bn back blocks always
run (on the front output plus the cached middle residual: the runtime's BLOCK_k_b action). cache-dit's
own DBCache runs beside it as a peer when installed (cachepilot.evaluation.peers).
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.runtime import FULL, Action, Signals

from .base import BasePolicy


def default_front_blocks(num_blocks: int) -> int:
    """cache-dit's Fn = 8, capped at half the blocks so small models keep something to reuse."""
    return min(8, max(1, num_blocks // 2))


@dataclass
class DBCacheConfig:
    front_blocks: int = 8  # Fn
    back_blocks: int = 0  # Bn
    threshold: float = 0.08
    warmup_steps: int = 8

    def __post_init__(self):
        self.front_blocks = checks.count("DBCache front blocks (Fn)", self.front_blocks)
        self.back_blocks = checks.count("DBCache back blocks (Bn)", self.back_blocks, low=0)
        self.threshold = checks.threshold("DBCache threshold", self.threshold)
        self.warmup_steps = checks.count("DBCache warm-up steps", self.warmup_steps, low=0)


class DBCache(BasePolicy):
    name = "dbcache"
    signals = frozenset()

    def __init__(self, config: DBCacheConfig | None = None, **overrides):
        self.config = config or DBCacheConfig(**overrides)
        self.back_blocks = self.config.back_blocks
        self.probe_blocks = self.config.front_blocks
        self.block_ks = (self.config.front_blocks,)

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        reuse = Action.block(self.config.front_blocks, self.config.back_blocks)
        if (signals.step >= self.config.warmup_steps and signals.probe_rel_l1 is not None
                and signals.probe_rel_l1 <= self.config.threshold and reuse in valid):
            return reuse
        return FULL
