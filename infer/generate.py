"""Generate a video with any known model: the library function behind `cachepilot generate`."""

from __future__ import annotations

import numpy as np
import torch

from cachepilot import checks
from cachepilot.errors import NonFiniteLatentsError
from cachepilot.models.limits import check_generation


def _stop_on_non_finite(pipe, step: int, timestep, tensors: dict) -> dict:
    """A callback_on_step_end that fails fast, naming the step, when the latents stop being finite."""
    if not torch.isfinite(tensors["latents"]).all():
        raise NonFiniteLatentsError(f"NaN or Inf in the latents after denoising step {step} (timestep {float(timestep):.1f})")
    return {}


def generate_video(
    pipe,
    prompt: str | list[str],
    steps: int = 50,
    guidance: float = 5.0,
    seed: int = 0,
    negative_prompt: str | None = None,
    progress: bool = True,
    **pipe_kwargs,
) -> np.ndarray:
    """Run the pipeline; returns frames (batch, frames, H, W, 3) in [0, 1]. Deterministic for a seed (sample i of
    a batch uses seed + i)."""
    prompts = [checks.prompt(p) for p in ([prompt] if isinstance(prompt, str) else list(prompt))]
    steps, guidance, seed = checks.count("steps", steps), checks.guidance(guidance), checks.seed(seed, len(prompts))
    check_generation(pipe, len(prompts), steps, pipe_kwargs)
    if hasattr(pipe.text_encoder, "tokenize"):
        pipe.text_encoder.tokenize(prompts)  # fail on unknown words before any compute
    pipe.set_progress_bar_config(disable=not progress)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(
        prompt=prompts,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="np",
        callback_on_step_end=_stop_on_non_finite,
        **pipe_kwargs,
    )
    frames = np.asarray(out.frames, dtype=np.float32)
    if not np.isfinite(frames).all():
        raise NonFiniteLatentsError("the generated video contains NaN or Inf")
    return frames
