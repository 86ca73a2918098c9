"""MagCache (Ma et al., 2025; official code Zehong-Ma/MagCache; peer: diffusers MagCacheConfig).

Per branch, from a calibrated array of residual-magnitude ratios: after the first
int(retention_ratio * steps) steps, acc_ratio *= ratio[t]; acc_steps += 1; acc_err += |1 - acc_ratio|;
skip while acc_err < threshold and acc_steps <= K, else compute and reset. The schedule depends only on
the calibrated ratios, so it is the same for every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cachepilot import checks
from cachepilot.runtime import FULL, STEP, Action, Signals

from .base import BasePolicy


def nearest_interp(values: Sequence[float], length: int) -> list[float]:
    """MagCache's rule for other step counts: nearest-neighbour resampling of the calibrated array."""
    if length == 1:
        return [values[-1]]
    scale = (len(values) - 1) / (length - 1)
    return [values[int(round(i * scale))] for i in range(length)]


@dataclass
class MagCacheConfig:
    mag_ratios: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per branch, one ratio per step
    threshold: float = 0.12
    max_skip_steps: int = 2  # K
    retention_ratio: float = 0.2

    def __post_init__(self):
        self.threshold = checks.threshold("MagCache threshold", self.threshold)
        self.max_skip_steps = checks.count("MagCache max_skip_steps", self.max_skip_steps, low=0)
        self.retention_ratio = float(checks.number("MagCache retention_ratio", self.retention_ratio, low=0.0, high=1.0))

    @classmethod
    def from_calibration(cls, record: dict, **kwargs) -> "MagCacheConfig":
        """Per-branch ratios measured by `cachepilot calibrate` for this model."""
        return cls(mag_ratios={b: tuple(v) for b, v in record["magcache"]["mag_ratios"].items()}, **kwargs)


class MagCache(BasePolicy):
    name = "magcache"
    signals = frozenset()

    def __init__(self, config: MagCacheConfig | None = None, **overrides):
        self.config = config or MagCacheConfig(**overrides)
        if not self.config.mag_ratios:
            raise ValueError("MagCache needs calibrated mag_ratios (run `cachepilot calibrate` for a new model)")
        self.reset()

    def reset(self) -> None:
        self.state: dict[tuple[str, int], list[float]] = {}  # key -> [acc_ratio, acc_steps, acc_err]

    def ratios(self, branch: str, num_steps: int) -> list[float]:
        source = self.config.mag_ratios.get(branch) or self.config.mag_ratios["cond"]
        return list(source) if len(source) == num_steps else nearest_interp(source, num_steps)

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        if signals.num_steps is None:
            raise ValueError("MagCache needs the number of steps to align its calibrated ratios")
        key = (signals.branch, signals.sample)
        state = self.state.setdefault(key, [1.0, 0, 0.0])
        if signals.step < int(self.config.retention_ratio * signals.num_steps) or STEP not in valid:
            self.state[key] = [1.0, 0, 0.0]
            return FULL
        state[0] *= self.ratios(signals.branch, signals.num_steps)[signals.step]
        state[1] += 1
        state[2] += abs(1 - state[0])
        if state[2] < self.config.threshold and state[1] <= self.config.max_skip_steps:
            return STEP
        self.state[key] = [1.0, 0, 0.0]
        return FULL
