"""TeaCache (Liu et al., 2025; official code ali-vilab/TeaCache), re-implemented as a policy.

Per branch: rel = rel-L1 change of the indicator (the timestep embedding on Wan / CogVideoX, block 0's
modulated input on HunyuanVideo / LTX); acc += poly(rel) with a 4th-order polynomial fitted per model;
skip (reuse the whole residual) while acc < threshold, else compute and reset acc. The first step(s)
and, without ret-steps, the last step are always computed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cachepilot import checks
from cachepilot.runtime import FULL, STEP, Action, Signals

from .base import BasePolicy

# The authors' fitted coefficient sets, per model (highest degree first); "/ret-steps": for the ret-steps mode.
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    "wan2.1-t2v-1.3b/ret-steps": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    "wan2.1-t2v-14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    "wan2.1-t2v-14b/ret-steps": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
    "hunyuanvideo": (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02),
    "cogvideox-5b": (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02),
    "ltx-video": (2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03),
}


@dataclass
class TeaCacheConfig:
    threshold: float = 0.08  # Wan2.1 1.3B: 0.08 gives ~2x in the paper
    coefficients: tuple[float, ...] | None = None  # None: the model's calibration in apply_cache, else Wan2.1 1.3B's
    ret_steps: bool = False  # Wan "use_ret_steps": first 5 steps computed, no forced last, indicator timestep_proj
    expert_coefficients: tuple[tuple[float, ...], ...] = ()  # per expert of a two-expert pipeline (Wan2.2), if fitted

    def __post_init__(self):
        self.threshold = checks.threshold("TeaCache threshold", self.threshold)

    def calibrated(self, record: dict) -> "TeaCacheConfig":
        """This config with the polynomial (and the per-expert ones) fitted by `cachepilot calibrate`."""
        fit = record["teacache"]
        return replace(self, coefficients=tuple(fit["coefficients"]),
                       expert_coefficients=tuple(tuple(e["coefficients"]) for e in fit.get("per_expert", ())))


class TeaCache(BasePolicy):
    name = "teacache"
    signals = frozenset()

    @classmethod
    def from_calibration(cls, record: dict, **overrides) -> "TeaCache":
        """Use the polynomial fitted by `cachepilot calibrate` for this model."""
        return cls(TeaCacheConfig(**overrides).calibrated(record))

    def __init__(self, config: TeaCacheConfig | None = None, **overrides):
        self.config = config or TeaCacheConfig(**overrides)
        self.rescale = np.poly1d(self.config.coefficients or COEFFICIENTS["wan2.1-t2v-1.3b"])
        self.expert_rescales = [np.poly1d(c) for c in self.config.expert_coefficients]
        self.reset()

    def reset(self) -> None:
        self.acc: dict[tuple[str, int], float] = {}

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        if signals.num_steps is None:
            raise ValueError("TeaCache needs the number of steps (its last step is always computed)")
        key = (signals.branch, signals.sample)
        forced_first = 5 if self.config.ret_steps else 1
        forced_last = not self.config.ret_steps and signals.step == signals.num_steps - 1
        change = signals.temb_proj_rel_l1 if self.config.ret_steps else signals.indicator_rel_l1
        if signals.step < forced_first or forced_last or change is None or STEP not in valid:
            self.acc[key] = 0.0
            return FULL
        rescale = self.expert_rescales[signals.expert] if signals.expert < len(self.expert_rescales) else self.rescale
        self.acc[key] = self.acc.get(key, 0.0) + float(rescale(change))
        if self.acc[key] < self.config.threshold:
            return STEP
        self.acc[key] = 0.0
        return FULL
