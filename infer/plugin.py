"""The plugin surface for diffusers pipelines: apply a cache method by name (or a Policy object)."""

from __future__ import annotations

from pathlib import Path

from cachepilot.models.adapters import num_blocks
from cachepilot.errors import CachepilotError
from cachepilot.policies.calibration import CALIBRATION_FILE, load_calibration
from cachepilot.policies.policy_file import PolicyBundle, load_policy
from cachepilot.policies.registry import get_baseline, make_baseline
from cachepilot.runtime import apply_cache as _apply_runtime
from cachepilot.runtime import cache_summary, remove_cache, reset_cache

__all__ = ["apply_cache", "remove_cache", "cache_summary", "reset_cache", "load_policy"]


def calibration_of(pipe) -> dict | None:
    """The calibration.json saved beside the pipeline's weights, if any."""
    folder = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    path = Path(folder) / CALIBRATION_FILE if folder else None
    return load_calibration(path) if path is not None and path.is_file() else None


def apply_cache(pipe, policy, calibration: dict | None = None, num_inference_steps: int | None = None,
                budget: float | None = None, **knobs):
    """`apply_cache(pipe, load_policy(path), budget=0.35)`, `apply_cache(pipe, "magcache", threshold=0.12)` or
    `apply_cache(pipe, policy_object)`.

    A learned policy is checked against the pipeline (same model config; a step count its observation can
    take) and needs a budget within its trained range. Methods that need a calibration (TeaCache,
    MagCache) read `calibration.json` from the model folder unless one is passed.
    """
    if isinstance(policy, PolicyBundle):
        if budget is None:
            raise CachepilotError("a learned policy needs a budget: apply_cache(pipe, policy, budget=0.35)")
        policy.check_pipeline(pipe, num_inference_steps)
        return _apply_runtime(pipe, policy.policy(budget), num_inference_steps=num_inference_steps)
    if budget is not None:
        raise CachepilotError("budget applies to learned policies; heuristic methods take their own knob")
    if isinstance(policy, str):
        baseline = get_baseline(policy)
        unknown = set(knobs) - {baseline.knob}
        if unknown:
            raise CachepilotError(f"{policy} takes the knob {baseline.knob!r}, not {', '.join(sorted(unknown))}")
        if calibration is None:
            calibration = calibration_of(pipe)
        blocks = num_blocks(pipe.transformer)
        policy = make_baseline(policy, knobs.get(baseline.knob), calibration=calibration, num_blocks=blocks)
    return _apply_runtime(pipe, policy, num_inference_steps=num_inference_steps)
