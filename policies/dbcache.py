"""DBCache (cache-dit): Fn front blocks always run and give the signal; the middle is reused while the
rel-L1 change of the Fn residual stays under the threshold, after a warm-up. Bn back blocks always
running is not expressible as one BLOCK_k action, so this re-implementation supports Bn = 0 (cache-dit's
default) and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot.runtime import FULL, Action, Signals

from .base import BasePolicy


@dataclass
class DBCacheConfig:
    front_blocks: int = 8  # Fn
    back_blocks: int = 0  # Bn (only 0 supported)
    threshold: float = 0.08
    warmup_steps: int = 8
    sweep: tuple[float, ...] = (0.04, 0.08, 0.12, 0.2)


class DBCache(BasePolicy):
    name = "dbcache"
    signals = frozenset()

    def __init__(self, config: DBCacheConfig | None = None, **overrides):
        self.config = config or DBCacheConfig(**overrides)
        if self.config.back_blocks != 0:
            raise ValueError("DBCache with Bn > 0 is not supported by the runtime's BLOCK_k action; use Bn = 0")
        self.probe_blocks = self.config.front_blocks
        self.block_ks = (self.config.front_blocks,)

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        reuse = Action.block(self.config.front_blocks)
        if (signals.step >= self.config.warmup_steps and signals.probe_rel_l1 is not None
                and signals.probe_rel_l1 <= self.config.threshold and reuse in valid):
            return reuse
        return FULL
