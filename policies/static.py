"""Static / FORA-style caching: compute every N-th step, reuse the whole step in between."""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.runtime import FULL, STEP, Action, Signals

from .base import BasePolicy


@dataclass
class StaticConfig:
    interval: int = 2  # FULL on steps 0, N, 2N, ...; STEP otherwise

    def __post_init__(self):
        self.interval = checks.count("static interval", self.interval)


class StaticCache(BasePolicy):
    name = "static"
    signals = frozenset()

    def __init__(self, config: StaticConfig | None = None, **overrides):
        self.config = config or StaticConfig(**overrides)

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        return FULL if signals.step % self.config.interval == 0 else STEP
