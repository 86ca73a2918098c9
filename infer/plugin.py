"""The plugin surface for diffusers pipelines: apply a cache method by name (or a Policy object)."""

from __future__ import annotations

from pathlib import Path

from cachepilot.models.adapters import adapter_for
from cachepilot.policies.calibration import CALIBRATION_FILE, load_calibration
from cachepilot.policies.registry import get_baseline, make_baseline
from cachepilot.runtime import apply_cache as _apply_runtime
from cachepilot.runtime import cache_summary, remove_cache, reset_cache

__all__ = ["apply_cache", "remove_cache", "cache_summary", "reset_cache"]


def _calibration_of(pipe) -> dict | None:
    """The calibration.json saved beside the pipeline's weights, if any."""
    folder = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    path = Path(folder) / CALIBRATION_FILE if folder else None
    return load_calibration(path) if path is not None and path.is_file() else None


def apply_cache(pipe, policy, calibration: dict | None = None, num_inference_steps: int | None = None, **knobs):
    """`apply_cache(pipe, "magcache", threshold=0.12)` or `apply_cache(pipe, policy_object)`.

    Methods that need a calibration (TeaCache, MagCache) read `calibration.json` from the model folder
    unless one is passed.
    """
    if isinstance(policy, str):
        baseline = get_baseline(policy)
        unknown = set(knobs) - {baseline.knob}
        if unknown:
            from cachepilot.errors import CachepilotError

            raise CachepilotError(f"{policy} takes the knob {baseline.knob!r}, not {', '.join(sorted(unknown))}")
        if calibration is None:
            calibration = _calibration_of(pipe)
        num_blocks = len(adapter_for(pipe.transformer).blocks(pipe.transformer))
        policy = make_baseline(policy, knobs.get(baseline.knob), calibration=calibration, num_blocks=num_blocks)
    return _apply_runtime(pipe, policy, num_inference_steps=num_inference_steps)
