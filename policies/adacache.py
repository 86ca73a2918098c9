"""AdaCache + MoReg (Kahatapitiya et al., 2024; official code AdaCache-DiT/AdaCache, Open-Sora 1.2).

After each full compute, the rate of change c of a middle block's residual (rel-L1 between the last two
computes, per step in between) is looked up in a codebook that says how many steps to go before the next
compute. With MoReg, c is scaled by a motion score of the residual, so videos with more motion get
more compute. Our reading of details the paper leaves open, marked *reconstructed*: the residual is
the middle block's (the official code uses a chosen attention module of a middle block), MoReg reads
the runtime's frame-difference motion energy of the block-stack residual, the 50-step codebook is
interpolated between the official 30- and 100-step ones, and reuse is STEP (the whole residual).
"""

from __future__ import annotations

from dataclasses import dataclass

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.runtime import FULL, STEP, Action, Signals

from .base import BasePolicy

CODEBOOKS: dict[str, dict[float, int]] = {
    "30-fast": {0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.00: 1},
    "30-slow": {0.08: 3, 0.16: 2, 0.24: 1, 1.00: 1},
    "50-fast": {0.05: 9, 0.10: 7, 0.15: 5, 0.20: 4, 0.25: 3, 1.00: 2},  # reconstructed (interpolated)
    "100-fast": {0.03: 12, 0.05: 10, 0.07: 8, 0.09: 6, 0.11: 4, 1.00: 3},
}


def codebook_for(num_steps: int, speed: str = "fast") -> dict[float, int]:
    """The codebook of the nearest official step count (30, 50, 100) for this speed."""
    counts = [int(k.split("-")[0]) for k in CODEBOOKS if k.endswith(speed)]
    if not counts:
        raise ValueError(f"no AdaCache codebook for speed {speed!r}; choose fast or slow")
    return CODEBOOKS[f"{min(counts, key=lambda c: abs(c - num_steps))}-{speed}"]


def steps_until_compute(distance: float, codebook: dict[float, int]) -> int:
    for threshold in sorted(codebook):
        if distance <= threshold:
            return codebook[threshold]
    return 1


@dataclass
class AdaCacheConfig:
    speed: str = "fast"
    threshold_scale: float = 1.0  # knob: multiplies the codebook thresholds (larger = more reuse)
    moreg: bool = True
    motion_norm: float = 0.385
    motion_power: float = 8.0
    motion_gradient_weight: float = 10.0

    def __post_init__(self):
        self.threshold_scale = checks.positive("AdaCache threshold_scale", self.threshold_scale)
        if self.speed not in ("fast", "slow"):
            raise InvalidInputError(f"AdaCache speed must be fast or slow, got {self.speed!r}")


class AdaCache(BasePolicy):
    name = "adacache"
    signals = frozenset({"mid_block_change", "motion_energy"})

    def __init__(self, config: AdaCacheConfig | None = None, **overrides):
        self.config = config or AdaCacheConfig(**overrides)
        self.reset()

    def reset(self) -> None:
        self.budget: dict[tuple[str, int], int] = {}  # key -> calls between computes
        self.prev_motion: dict[tuple[str, int], float] = {}

    def distance(self, signals: Signals, key) -> float | None:
        """c, with MoReg's motion scaling when enabled."""
        c = signals.mid_block_change
        if c is None:
            return None
        if self.config.moreg and signals.motion_energy is not None:
            m = (signals.motion_energy / self.config.motion_norm) ** self.config.motion_power
            prev = self.prev_motion.get(key, m)
            self.prev_motion[key] = m
            c *= m + abs(self.config.motion_gradient_weight * (m - prev) / max(1, self.budget.get(key, 1)))
        return c

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        if signals.num_steps is None:
            raise ValueError("AdaCache needs the number of steps (codebook choice, forced last step)")
        key = (signals.branch, signals.sample)
        if signals.step == 0 or signals.step == signals.num_steps - 1 or STEP not in valid:
            return FULL
        if signals.steps_since_full == 0:  # first decision after a compute: set the reuse budget
            c = self.distance(signals, key)
            book = {t * self.config.threshold_scale: n for t, n in codebook_for(signals.num_steps, self.config.speed).items()}
            self.budget[key] = 1 if c is None else steps_until_compute(c, book)
        return STEP if signals.steps_since_full + 1 < self.budget.get(key, 1) else FULL
