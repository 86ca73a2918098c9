"""Run cache methods on the same (prompt, seed) pairs and score them against the uncached reference.

All pairs of one method run as one batch, so per-sample decisions go through the runtime exactly as in
the batched environment; compute is counted per sample, wall time per batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cachepilot.metrics import psnr, ssim
from cachepilot.models.stepping import generate_batch
from cachepilot.policies.base import NoCache
from cachepilot.runtime import cache_summary, cached


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
    with cached(pipe, policy, num_inference_steps=steps):
        frames = generate_batch(pipe, prompts, seeds, steps, guidance)
        return frames, cache_summary(pipe)


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


@dataclass
class ScoredPairs:
    """What a method is scored on: (prompt, seed) pairs at one step count and guidance, and their uncached frames."""

    prompts: list[str]
    seeds: list[int]
    steps: int
    guidance: float
    reference: np.ndarray


def run_method(pipe, policy, pairs: ScoredPairs, method: str, knob: float) -> tuple[list[PairResult], float]:
    """Per-pair results of one batched generation under `policy`, and the batch's transformer wall time."""
    frames, fractions, wall = generate_with(pipe, policy, pairs.prompts, pairs.seeds, pairs.steps, pairs.guidance)
    return score(frames, pairs.reference, pairs.prompts, pairs.seeds, fractions, method, knob), wall


def score(frames, reference, prompts, seeds, fractions, method: str, knob: float) -> list[PairResult]:
    return [PairResult(method, knob, p, s, f, psnr(frames[i], reference[i]), ssim(frames[i], reference[i]))
            for i, (p, s, f) in enumerate(zip(prompts, seeds, fractions))]


def timed_reference(pipe, prompts, seeds, steps, guidance) -> tuple[np.ndarray, float]:
    """The uncached frames, generated through the runtime (always FULL) so its transformer wall time is measured
    the same way as every method's."""
    with cached(pipe, NoCache(), num_inference_steps=steps):
        frames = generate_batch(pipe, prompts, seeds, steps, guidance)
        return frames, cache_summary(pipe).wall_time
