"""The observation vector a learned policy sees: runtime signals plus the compute budget, normalised.

The spec is data (feature names, order, normalisation), saved with every policy file, so inference rebuilds
exactly the vector the policy was trained on. Each feature is: the raw value, optionally log10(value +
1e-4), then (value - center) / scale, clipped to [-CLIP, CLIP]; a value that is not defined yet (no FULL
so far, no previous call) becomes `missing`. A signal's normalisation is declared with the signal
(`cachepilot.runtime.SIGNALS`); the default observation picks which signals a new policy sees.

Two features come from the budget rather than the signals:
  budget       the target fraction of full compute for the whole generation
  budget_left  the fraction of full compute per remaining step that would land exactly on the budget:
               (budget * steps - spent so far, in full steps) / steps remaining
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cachepilot.runtime import OPTIONAL_SIGNALS, SIGNALS, Signals, experts_of

CLIP = 5.0
LOG_EPS = 1e-4


@dataclass(frozen=True)
class Feature:
    name: str
    center: float = 0.0
    scale: float = 1.0
    log: bool = False
    missing: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"a feature name is a string, got {self.name!r}")
        if not isinstance(self.log, bool):
            raise ValueError(f"feature {self.name!r}: log is true or false, got {self.log!r}")
        for field_name in ("center", "scale", "missing"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"feature {self.name!r}: {field_name} must be a finite number, got {value!r}")
        if self.scale <= 0:
            raise ValueError(f"feature {self.name!r}: scale must be > 0, got {self.scale}")

    def normalise(self, value: float | None) -> float:
        if value is None or not math.isfinite(value):
            return self.missing
        if self.log:
            value = math.log10(max(value, 0.0) + LOG_EPS)
        return float(min(CLIP, max(-CLIP, (value - self.center) / self.scale)))

    @classmethod
    def of_signal(cls, name: str) -> "Feature":
        s = SIGNALS[name]
        return cls(name, s.center, s.scale, s.log, s.missing)


BUDGET_FEATURES = (Feature("budget", center=0.5, scale=0.5), Feature("budget_left", center=0.5, scale=0.5))
# Every default feature means the same at any step count and guidance: time is sigma, gaps are falls in sigma,
# changes are rates per unit of sigma, compute is a fraction. The timestep embedding's change is left out: it is
# a function of the time alone (no per-sample information), and does not scale with the step in sigma.
DEFAULT_SIGNALS = ("sigma", "sigma_step", "sigma_since_full", "guidance", "modulated_rate", "residual_rate",
                   "residual_norm_rate", "motion_energy", "compute_spent")
DEFAULT_FEATURES: tuple[Feature, ...] = (*map(Feature.of_signal, DEFAULT_SIGNALS), *BUDGET_FEATURES)


def budget_left(signals: Signals, budget: float) -> float | None:
    """Fraction of full compute per remaining step that spends exactly the budget (see the module docstring)."""
    if not signals.num_steps:
        return None
    remaining = max(signals.num_steps - signals.step, 1)
    return (budget * signals.num_steps - signals.compute_spent * signals.step) / remaining


@dataclass(frozen=True)
class ObservationSpec:
    features: tuple[Feature, ...] = DEFAULT_FEATURES
    version: int = 1

    @classmethod
    def for_pipeline(cls, pipe, extra_signals: tuple[str, ...] = ()) -> "ObservationSpec":
        """The default observation, plus which expert runs where the pipeline has two (Wan2.2), plus any extra
        registered signals asked for (appended, so a default observation stays a prefix)."""
        unknown = [n for n in extra_signals if n not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown signals {unknown}; registered: {', '.join(sorted(SIGNALS))}")
        base = DEFAULT_FEATURES + ((Feature.of_signal("expert"),) if experts_of(pipe) else ())
        extra = dict.fromkeys(n for n in extra_signals if n not in {f.name for f in base})
        return cls(base + tuple(map(Feature.of_signal, extra)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def size(self) -> int:
        return len(self.features)

    @property
    def signals_read(self) -> frozenset[str]:
        """The runtime's optional signals this spec reads (so the runtime computes only those)."""
        return frozenset(self.names) & OPTIONAL_SIGNALS

    def build(self, signals: Signals, budget: float) -> np.ndarray:
        extra = {"budget": budget, "budget_left": budget_left(signals, budget)}  # attribute reads: this runs per decision
        return np.array([f.normalise(extra[f.name] if f.name in extra else getattr(signals, f.name))
                         for f in self.features], dtype=np.float32)

    def to_dict(self) -> dict:
        return {"version": self.version, "clip": CLIP, "log_eps": LOG_EPS, "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict) -> "ObservationSpec":
        if data.get("version") != 1 or data.get("clip") != CLIP or data.get("log_eps") != LOG_EPS:
            raise ValueError(f"unsupported observation spec (version {data.get('version')!r}); this cachepilot reads version 1")
        known = set(SIGNALS) | {f.name for f in BUDGET_FEATURES}
        if not isinstance(data.get("features"), list) or not data["features"]:
            raise ValueError("an observation spec lists its features")
        features = tuple(Feature(**f) for f in data["features"])
        unknown = [f.name for f in features if f.name not in known]
        if unknown:
            raise ValueError(f"observation spec names unknown features {unknown}")
        if len({f.name for f in features}) != len(features):
            raise ValueError("observation spec names a feature twice")
        return cls(features=features)
