"""`cachepilot.apply_cache`: put a cache on a diffusers pipeline, whatever decides it: a learned policy file, a
baseline by name, or any Policy object."""

from __future__ import annotations

import os
from pathlib import Path

from cachepilot.errors import CachepilotError
from cachepilot.models.adapters import num_blocks
from cachepilot.policies.calibration import find_calibration
from cachepilot.policies.policy_file import PolicyBundle, load_policy
from cachepilot.policies.registry import BASELINES, get_baseline, is_cache_config, make_baseline, policy_from_config
from cachepilot.runtime import CacheRuntime, attach_runtime


def apply_cache(pipe, method, *, budget: float | None = None, calibration: dict | None = None,
                num_inference_steps: int | None = None, guidance_scale: float | None = None,
                batched_cfg: bool | None = None, **knobs) -> CacheRuntime:
    """Cache a diffusers pipeline (or a bare transformer) with `method`, one of:

    - a policy file, loaded (`load_policy(path)`) or as a path (`str` or `Path`): a learned policy run at `budget`,
      the fraction of full compute to spend (within its trained range); it is checked against the transformer first
      (same model config; the trained step counts, when `num_inference_steps` is given), and each generation against
      the trained step counts and guidance scales (read from the pipeline, or given here for a bare transformer);
      `extrapolate=True` runs it outside them too, with a warning;
    - a baseline's name ("uniform", "static", "teacache", "magcache", "taylorseer", "first-block", "dbcache",
      "adacache", "mixcache") at its paper's defaults, or with knobs given by keyword (`threshold=0.12, max_skip_steps=4`);
      TeaCache and MagCache read `calibration` (default: `find_calibration(pipe)`, the calibration.json beside
      the weights);
    - a baseline's typed config (`TeaCacheConfig(threshold=0.1)`, `MagCacheConfig(...)`, ...), as diffusers'
      `enable_cache(config)` takes one; the model constants it leaves unset come from `calibration`;
    - any object implementing the Policy protocol (`cachepilot.runtime.Policy`).

    Returns the runtime. `remove_cache(pipe)` takes it off and leaves the transformer as it was;
    `cache_summary(pipe)` says what it did in the latest generation.
    """
    transformer = getattr(pipe, "transformer", pipe)
    if isinstance(method, str) and method not in BASELINES:
        if not os.path.isdir(method):
            raise CachepilotError(f"unknown cache method {method!r}: neither a baseline "
                                  f"({', '.join(n for n in BASELINES if n != 'none')}) nor a policy folder")
        method = Path(method)
    if isinstance(method, os.PathLike):
        method = load_policy(method)
    if isinstance(method, PolicyBundle):
        if budget is None:
            raise CachepilotError("a learned policy needs a budget: apply_cache(pipe, policy, budget=0.35)")
        extrapolate = bool(knobs.pop("extrapolate", False))
        if knobs:
            raise CachepilotError(f"a learned policy takes a budget (and extrapolate=True), not "
                                  f"{', '.join(sorted(knobs))}")
        method.check_pipeline(transformer, num_inference_steps, guidance_scale, extrapolate)
        policy = method.policy(budget, extrapolate=extrapolate)
    elif budget is not None:
        raise CachepilotError("budget applies to learned policies; a baseline takes its own knob (e.g. threshold=0.1)")
    elif isinstance(method, str):
        if calibration is None and get_baseline(method).calibration:
            calibration = find_calibration(pipe)
        policy = make_baseline(method, calibration=calibration, num_blocks=num_blocks(transformer), **knobs)
    elif knobs:
        raise CachepilotError(f"knobs ({', '.join(sorted(knobs))}) apply to baselines by name; set them on the policy")
    elif is_cache_config(method):
        policy = policy_from_config(method, calibration if calibration is not None else find_calibration(pipe))
    else:
        policy = method
    return attach_runtime(pipe, policy, num_inference_steps=num_inference_steps, batched_cfg=batched_cfg,
                          guidance_scale=guidance_scale)
