"""Run cache methods on the same (prompt, seed) pairs and score them against the uncached reference.

All pairs of one method run as one batch, so per-sample decisions go through the runtime exactly as in
the batched environment; compute is counted per sample, wall time per batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cachepilot.metrics import psnr, ssim
from cachepilot.models.stepping import generate
from cachepilot.policies.base import NoCache
from cachepilot.runtime import attach_runtime, cache_summary, remove_cache


@dataclass
class PairResult:
    method: str
    knob: float
    prompt: str
    seed: int
    computed_fraction: float
    psnr: float
    ssim: float

    def as_dict(self) -> dict:
        return asdict(self)


def generate_logged(pipe, policy, prompts: list[str], seeds: list[int], steps: int, guidance: float):
    """One batched generation under `policy`: (frames, the runtime's summary of what it did)."""
    attach_runtime(pipe, policy, num_inference_steps=steps)
    try:
        frames = generate(pipe, prompts, seeds, steps, guidance)
        return frames, cache_summary(pipe)
    finally:
        remove_cache(pipe)


def computed_fractions(summary, samples: int) -> list[float]:
    """Each sample's computed fraction of full compute, from the runtime's decisions."""
    fractions = []
    for i in range(samples):
        mine = [d for d in summary.decisions if d.sample == i]
        fractions.append(sum(d.flops for d in mine) / sum(d.full_flops for d in mine))
    return fractions


def generate_with(pipe, policy, prompts: list[str], seeds: list[int], steps: int, guidance: float):
    """One batched generation under `policy`: (frames, per-sample computed fraction, transformer wall time)."""
    frames, summary = generate_logged(pipe, policy, prompts, seeds, steps, guidance)
    return frames, computed_fractions(summary, len(prompts)), summary.wall_time


def run_method(pipe, policy, prompts: list[str], seeds: list[int], reference: np.ndarray, steps: int, guidance: float,
               method: str, knob: float) -> tuple[list[PairResult], float]:
    """Returns per-pair results and the batch's transformer wall time."""
    frames, fractions, wall = generate_with(pipe, policy, prompts, seeds, steps, guidance)
    return score(frames, reference, prompts, seeds, fractions, method, knob), wall


def score(frames, reference, prompts, seeds, fractions, method: str, knob: float) -> list[PairResult]:
    return [PairResult(method, knob, p, s, f, psnr(frames[i], reference[i]), ssim(frames[i], reference[i]))
            for i, (p, s, f) in enumerate(zip(prompts, seeds, fractions))]


def timed_reference(pipe, prompts, seeds, steps, guidance) -> tuple[np.ndarray, float]:
    """The uncached frames, generated through the runtime (always FULL) so its transformer wall time is measured
    the same way as every method's."""
    attach_runtime(pipe, NoCache(), num_inference_steps=steps)
    try:
        frames = generate(pipe, prompts, seeds, steps, guidance)
        wall = cache_summary(pipe).wall_time
    finally:
        remove_cache(pipe)
    return frames, wall
