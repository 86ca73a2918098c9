"""Calibrate the heuristic baselines for a model: what TeaCache, MagCache, AdaCache and MixCache need.

Full-compute generations of N prompts run through the runtime with an always-FULL recorder, which
logs, per call and branch, TeaCache's indicator change (x) and the relative change of the model output
(y), and per FULL the residual statistics. From them:
- TeaCache: a 4th-order polyfit of y against x over all steps of all prompts (with R^2 of the fit);
- MagCache: per branch and step, mean over prompts of ||r_t|| / ||r_t-1|| (first step 1.0), and its
  standard deviation across prompts;
- AdaCache / MixCache: percentiles of the middle-block and residual change rates, to place thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from cachepilot.models.stepping import generate
from cachepilot.policies.base import BasePolicy
from cachepilot.runtime import FULL, attach_runtime, cache_summary, remove_cache
from cachepilot.runtime.signals import rel_l1

@dataclass
class _Recorder(BasePolicy):
    """Always FULL; remembers each call's indicator change per (branch, step)."""

    name = "calibration-recorder"
    indicator: dict = field(default_factory=dict)

    def decide(self, signals, valid):
        self.indicator[(signals.branch, signals.sample, signals.step)] = signals.indicator_rel_l1
        return FULL


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {}
    return {f"p{q}": float(np.percentile(arr, q)) for q in (10, 25, 50, 75, 90)}


def calibrate(pipe, prompts: list[str], steps: int = 50, guidance: float = 5.0, seed: int = 0,
              model_id: str = "model", progress: bool = True) -> dict:
    """Run full-compute generations and return the calibration record (see module docstring)."""
    recorder = _Recorder()
    outputs: list[torch.Tensor] = []
    handle = pipe.transformer.register_forward_hook(lambda m, a, k, out: outputs.append(out[0].detach().float()), with_kwargs=True)
    attach_runtime(pipe, recorder)
    xs, ys = [], []
    ratios: dict[str, list[list[float]]] = {}
    mid, drift = [], []
    pipe.set_progress_bar_config(disable=True)
    try:
        for i, prompt in enumerate(tqdm(prompts, desc="calibrating", disable=not progress)):
            outputs.clear()
            recorder.indicator.clear()
            generate(pipe, [prompt], [seed + i], steps, guidance, decode=False)
            summary = cache_summary(pipe)
            # call order of decisions == call order of outputs (one row per call for batch-1 generation)
            previous: dict[str, torch.Tensor] = {}
            for decision, out in zip(summary.decisions, outputs):
                x = recorder.indicator.get((decision.branch, decision.sample, decision.step))
                if decision.branch in previous and x is not None:
                    xs.append(x)
                    ys.append(rel_l1(out, previous[decision.branch]))
                previous[decision.branch] = out
            per_branch: dict[str, list[float]] = {}
            for stat in summary.full_stats:
                ratio = stat.get("residual_norm_ratio")
                per_branch.setdefault(stat["branch"], []).append(1.0 if ratio is None else ratio)
                mid.append(stat.get("mid_block_change"))
                drift.append(stat.get("residual_rel_l1"))
            for branch, values in per_branch.items():
                ratios.setdefault(branch, []).append(values)
    finally:
        remove_cache(pipe)
        handle.remove()
    coeffs = np.polyfit(np.asarray(xs), np.asarray(ys), 4)
    fitted = np.polyval(coeffs, np.asarray(xs))
    r2 = 1 - np.sum((np.asarray(ys) - fitted) ** 2) / max(np.sum((np.asarray(ys) - np.mean(ys)) ** 2), 1e-12)
    mag = {b: np.asarray(v) for b, v in ratios.items()}
    return {
        "model": model_id,
        "steps": steps,
        "guidance": guidance,
        "prompts": len(prompts),
        "teacache": {"coefficients": [float(c) for c in coeffs], "r2": float(r2), "points": len(xs),
                     "indicator": "timestep embedding or block-0 modulated input, per the model's adapter"},
        "magcache": {"mag_ratios": {b: [float(x) for x in v.mean(0)] for b, v in mag.items()},
                     "spread": {b: [float(x) for x in v.std(0)] for b, v in mag.items()}},
        "adacache": {"mid_block_change": _percentiles(mid)},
        "mixcache": {"residual_rel_l1": _percentiles(drift)},
    }
