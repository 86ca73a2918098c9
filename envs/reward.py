"""The reward of a cache episode: pay for compute as you go, pay for quality and budget overruns at the end.

Per step t (with N denoising steps):
  cost     = -cost_weight * c_t / N          c_t: fraction of a full step computed (both branches)
  shaping  = -shaping_weight * d_t / N       d_t: relative L2 distance of the latents to the reference
                                              trajectory after step t (optional; needs stored trajectories)
At the end:
  quality  = -quality_weight * loss          loss: the metric's quality loss vs the full-compute reference
                                              (cachepilot.metrics.QUALITY_LOSS_DOC; 0 when identical)
  budget   = -budget_penalty * max(0, f - b) f: computed fraction of the episode, b: its target budget
Summed over an episode the cost terms give -cost_weight * f.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachepilot import checks
from cachepilot.metrics import Quality


@dataclass(frozen=True)
class RewardConfig:
    cost_weight: float = 0.1
    quality_weight: float = 1.0
    budget_penalty: float = 5.0
    shaping_weight: float = 0.0

    def __post_init__(self):
        for name, value in vars(self).items():
            checks.number(f"reward weight {name}", value, low=0.0)

    def step(self, step_cost: float, steps: int, distance: float | None = None) -> dict[str, float]:
        terms = {"reward_cost": -self.cost_weight * step_cost / steps, "reward_shaping": 0.0}
        if self.shaping_weight and distance is not None:
            terms["reward_shaping"] = -self.shaping_weight * distance / steps
        return terms

    def final(self, quality: Quality, computed_fraction: float, budget: float) -> dict[str, float]:
        excess = max(0.0, computed_fraction - budget)
        return {"reward_quality": -self.quality_weight * quality.loss, "reward_budget": -self.budget_penalty * excess,
                "budget_excess": excess}


def trajectory_distance(latents: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative L2 distance ||x - ref|| / ||ref||."""
    ref = reference.float()
    return float((latents.float() - ref).norm() / ref.norm().clamp_min(1e-12))
