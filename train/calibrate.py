"""Calibrate the heuristic baselines for a model: what TeaCache, MagCache, AdaCache and MixCache need.

Full-compute generations of N prompts run through the runtime with an always-FULL recorder, which
logs, per call and branch, TeaCache's indicator change (x) and the relative change of the model output
(y), and per FULL the residual statistics. From them:
- TeaCache: a 4th-order polyfit of y against x over all steps of all prompts (with R^2 of the fit), and one
  per expert for a pipeline with two (Wan2.2), each expert's outputs compared with its own only;
- MagCache: per branch and step, mean over prompts of ||r_t|| / ||r_t-1|| (first step 1.0, and 1.0 at the first
  step of an expert: the runtime keeps residuals per expert), and its standard deviation across prompts;
- AdaCache / MixCache: percentiles of the middle-block and residual change rates, to place thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from cachepilot.models.stepping import generate_batch
from cachepilot.parallel import Shard
from cachepilot.policies.base import BasePolicy
from cachepilot.runtime import FULL, attach_runtime, cache_summary, experts_of, remove_cache
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


def _polyfit(xs: list[float], ys: list[float]) -> tuple[list[float], float]:
    """TeaCache's 4th-order fit of the output change against the indicator change, and its R^2."""
    x, y = np.asarray(xs), np.asarray(ys)
    coeffs = np.polyfit(x, y, 4)
    r2 = 1 - np.sum((y - np.polyval(coeffs, x)) ** 2) / max(np.sum((y - np.mean(y)) ** 2), 1e-12)
    return [float(c) for c in coeffs], float(r2)


def calibrate(pipe, prompts: list[str], steps: int = 50, guidance: float = 5.0, seed: int = 0,
              model_id: str = "model", progress: bool = True, shard: Shard = Shard()) -> dict:
    """Run full-compute generations and return the calibration record (see module docstring). Over several processes
    (`shard`) each generates its share of the prompts (one per generation, as one process does) and every process
    returns the record of all of them, pooled in prompt order: the same record as one process's."""
    recorder = _Recorder()
    outputs: list[torch.Tensor] = []
    def keep_rows(_module, _args, _kwargs, out):  # one entry per row: the runtime records one decision per row
        outputs.extend(out[0].detach().float().split(1))
    handles = [model.register_forward_hook(keep_rows, with_kwargs=True) for model in (pipe.transformer, *experts_of(pipe))]
    attach_runtime(pipe, recorder)
    pipe.set_progress_bar_config(disable=True)
    measured = []
    try:
        mine = shard.take(list(enumerate(prompts)))
        for i, prompt in tqdm(mine, desc="calibrating", disable=not progress or shard.rank != 0):
            outputs.clear()
            recorder.indicator.clear()
            generate_batch(pipe, [prompt], [seed + i], steps, guidance, decode=False)
            measured.append((i, _measurements(cache_summary(pipe), recorder, outputs)))
    finally:
        remove_cache(pipe)
        for handle in handles:
            handle.remove()
    xs, ys = {}, {}  # per expert
    ratios: dict[str, list[list[float]]] = {}
    mid, drift = [], []
    for one in shard.in_order(measured):
        for expert, pairs in one["changes"].items():
            xs.setdefault(expert, []).extend(x for x, _ in pairs)
            ys.setdefault(expert, []).extend(y for _, y in pairs)
        for branch, values in one["ratios"].items():
            ratios.setdefault(branch, []).append(values)
        mid += one["mid"]
        drift += one["drift"]
    fits = [_polyfit(xs[e], ys[e]) for e in sorted(xs)]
    coeffs, r2 = _polyfit(sum(xs.values(), []), sum(ys.values(), []))
    mag = {b: np.asarray(v) for b, v in ratios.items()}
    return {
        "model": model_id,
        "steps": steps,
        "guidance": guidance,
        "prompts": len(prompts),
        "teacache": {"coefficients": coeffs, "r2": r2, "points": sum(map(len, xs.values())),
                     "indicator": "timestep embedding or block-0 modulated input, per the model's adapter",
                     **({"per_expert": [{"coefficients": c, "r2": r} for c, r in fits]} if len(fits) > 1 else {})},
        "magcache": {"mag_ratios": {b: [float(x) for x in v.mean(0)] for b, v in mag.items()},
                     "spread": {b: [float(x) for x in v.std(0)] for b, v in mag.items()}},
        "adacache": {"mid_block_change": _percentiles(mid)},
        "mixcache": {"residual_rel_l1": _percentiles(drift)},
    }


def _measurements(summary, recorder: _Recorder, outputs: list[torch.Tensor]) -> dict:
    """One generation's points: per expert (indicator change, output change) pairs, per branch the residual norm
    ratios of its FULL calls, and the middle-block and residual change rates."""
    changes: dict[int, list[tuple[float, float]]] = {}
    # the runtime records decisions in the order of the rows of the calls: the order of `outputs`
    previous: dict[tuple[int, str], torch.Tensor] = {}
    for decision, out in zip(summary.decisions, outputs):
        x = recorder.indicator.get((decision.branch, decision.sample, decision.step))
        key = (decision.expert, decision.branch)  # an expert's output is compared with its own only
        if key in previous and x is not None:
            changes.setdefault(decision.expert, []).append((x, rel_l1(out, previous[key])))
        previous[key] = out
    ratios: dict[str, list[float]] = {}
    for stat in summary.full_stats:
        ratio = stat.get("residual_norm_ratio")
        ratios.setdefault(stat["branch"], []).append(1.0 if ratio is None else ratio)
    return {"changes": changes, "ratios": ratios, "mid": [s.get("mid_block_change") for s in summary.full_stats],
            "drift": [s.get("residual_rel_l1") for s in summary.full_stats]}
