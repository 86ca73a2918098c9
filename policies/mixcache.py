"""MixCache (arXiv 2508.12691), *reconstructed*: no official code exists, so this follows the paper's
description (three granularities, context-aware triggering, an adaptive hybrid decision, non-interference)
with our own choice of estimates, stated here.

- Context-aware triggering: no caching until the measured step-to-step change of the block-stack
  residual (`residual_rel_l1`) has fallen below `trigger`; once triggered, caching stays on.
- Adaptive hybrid decision: each granularity's error is estimated from the recent drift of what it
  would reuse, grown with the number of calls it has been reused for:
  STEP    residual_rel_l1 * (calls since FULL + 1)
  CFG     cfg_diff_drift * (calls since FULL + 1)            (uncond branch only)
  BLOCK_k residual_rel_l1 * (n - k) / n * (calls since FULL + 1)
  and the cheapest granularity whose estimate is under its threshold is chosen (STEP, then CFG, then
  BLOCK_k for increasing k), else FULL.
- Non-interference: a branch reuses at most `max_reuse` calls in a row before it is refreshed by FULL.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.runtime import CFG, FULL, STEP, Action, Signals

from .base import BasePolicy


@dataclass
class MixCacheConfig:
    trigger: float = 0.10
    step_threshold: float = 0.05
    cfg_threshold: float = 0.10
    block_threshold: float = 0.08
    block_ks: tuple[int, ...] = ()  # BLOCK_k granularities offered (empty: step and CFG only)
    num_blocks: int | None = None  # needed when block_ks is set (for the (n - k) / n estimate)
    max_reuse: int = 3


class MixCache(BasePolicy):
    name = "mixcache"
    signals = frozenset({"residual_rel_l1", "cfg_diff_drift"})

    def __init__(self, config: MixCacheConfig | None = None, scale: float = 1.0, **overrides):
        self.config = config or MixCacheConfig(**overrides)
        self.scale = checks.positive("MixCache scale", scale)
        self.block_ks = tuple(sorted(self.config.block_ks))
        if self.block_ks and not self.config.num_blocks:
            raise ValueError("MixCache with block granularity needs num_blocks")
        self.reset()

    def reset(self) -> None:
        self.triggered: set[tuple[str, int]] = set()

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        key = (signals.branch, signals.sample)
        drift = signals.residual_rel_l1
        if key not in self.triggered:
            if drift is None or drift >= self.config.trigger:
                return FULL
            self.triggered.add(key)
        since = signals.steps_since_full
        if since is None or since >= self.config.max_reuse or drift is None:  # None: no drift measured (a new expert)
            return FULL
        grow, s = since + 1, self.scale
        if STEP in valid and drift * grow < self.config.step_threshold * s:
            return STEP
        if CFG in valid and signals.cfg_diff_drift is not None and signals.cfg_diff_drift * grow < self.config.cfg_threshold * s:
            return CFG
        for k in self.block_ks:
            action = Action.block(k)
            n = self.config.num_blocks
            if action in valid and drift * (n - k) / n * grow < self.config.block_threshold * s:
                return action
        return FULL
