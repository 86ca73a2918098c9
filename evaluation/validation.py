"""Score a policy network on an environment's pairs through the real inference path, beside the uniform schedule."""

from __future__ import annotations

import numpy as np

from cachepilot.envs.episodes import CacheEpisodes
from cachepilot.policies.learned import LearnedPolicy, PolicyNet
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.policies.trained_range import TrainedRange

from .harness import ScoredPairs, run_method
from .oracle import fulls_for_budget


def _score(episodes: CacheEpisodes, reference: np.ndarray, policy, method: str, knob: float) -> dict:
    prompts, seeds = [p for p, _ in episodes.pairs], [s for _, s in episodes.pairs]
    results, _ = run_method(episodes.pipe, policy, ScoredPairs(prompts, seeds, episodes.steps, episodes.guidance,
                                                                reference), method, knob)
    return {"psnr": float(np.mean([r.psnr for r in results])), "ssim": float(np.mean([r.ssim for r in results])),
            "computed_fraction": float(np.mean([r.computed_fraction for r in results])), "pairs": len(results)}


def evaluate_student(episodes: CacheEpisodes, net: PolicyNet, budgets) -> dict[float, dict]:
    """The network as a LearnedPolicy at each budget, on the pairs of `episodes` (one batched generation per budget)."""
    reference = episodes.store.outputs(episodes.pairs)
    return {float(b): _score(episodes, reference, LearnedPolicy(net, episodes.observation_spec, episodes.actions,
                                                                episodes.num_blocks, b,
                                                                trained=TrainedRange((episodes.steps,) * 2)),
                             "learned", b)
            for b in budgets}


def evaluate_uniform(episodes: CacheEpisodes, budgets) -> dict[float, dict]:
    """The static baseline's schedule family at the number of FULL steps each budget allows."""
    reference = episodes.store.outputs(episodes.pairs)
    steps = episodes.steps
    return {float(b): _score(episodes, reference, FixedSchedule.uniform(steps, fulls_for_budget(b, steps) / steps),
                             "uniform", b) for b in budgets}


def summary_table(student: dict, uniform: dict) -> str:
    lines = ["| budget | learned PSNR dB | learned compute | uniform PSNR dB | uniform compute |", "|---|---|---|---|---|"]
    for b in student:
        s, u = student[b], uniform[b]
        lines.append(f"| {b:.2f} | {s['psnr']:.2f} | {s['computed_fraction']:.3f} | {u['psnr']:.2f} | "
                     f"{u['computed_fraction']:.3f} |")
    return "\n".join(lines)
