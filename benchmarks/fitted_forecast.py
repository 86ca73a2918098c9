"""Does a forecaster fitted to the model beat the fixed Newton weights? Least squares on the train pairs, scored on
the uniform schedule over the test pairs.

    python benchmarks/fitted_forecast.py [--pairs 16] [--steps 50] [--guidance 5] [--fractions 0.5,0.35,0.25,0.14]

The runtime forecasts a skipped block-stack residual with Newton's polynomial through the last FULL residuals
(order 1: the line through two; order 2: the parabola through three). The fitted forecaster keeps Newton's
terms, which follow uneven FULL spacing, and scales each by a weight that depends on the gap d (steps since the
last FULL):

    forecast = y0 + l1(d) * N1 + l2(d) * N2

fitted by least squares over every (FULL, FULL, FULL, target) triple with near-even spacing of the train pairs'
uncached trajectories (both CFG branches). The script prints the weights, the fit's one-step error against
Newton's order 1 (open loop, on the train trajectories), and the PSNR of the uniform schedule with each forecaster
on the test pairs (closed loop: the forecasts feed the next steps).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cachepilot.evaluation.harness import timed_reference
from cachepilot.metrics import psnr
from cachepilot.models.registry import load_pipeline
from cachepilot.models.stepping import generate_batch
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.policies.uniform import UniformCache
from cachepilot.provenance import machine_summary
from cachepilot.runtime import FULL, cache_summary, cached
from cachepilot.runtime.forecaster import Forecaster

MAX_GAP = 10


def trajectories(pipe, prompts: list[str], steps: int, guidance: float) -> torch.Tensor:
    """The block-stack residual of every step of the uncached generations: (branches, steps, samples, values)."""
    kept: list[torch.Tensor] = []
    with cached(pipe, FixedSchedule([FULL] * steps), num_inference_steps=steps) as runtime:
        def keep(step, latents):
            kept.append(torch.stack([torch.stack([runtime.branches[b].get("residual", s)[0].flatten().clone()
                                                  for s in range(len(prompts))]) for b in ("cond", "uncond")]))
        generate_batch(pipe, prompts, list(range(len(prompts))), steps, guidance, on_step=keep, decode=False)
    return torch.stack(kept, 1).double()


def newton_terms(y0, y1, y2, g1: float, g2: float, d: float):
    """Newton's first- and second-order terms at d steps after y0 (FULLs g1 and g1 + g2 steps before it)."""
    f01 = (y0 - y1) / g1
    f012 = (f01 - (y1 - y2) / g2) / (g1 + g2)
    return d * f01, d * (d + g1) * f012


def fit(residuals: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per gap d = 1..MAX_GAP: the least-squares weights (l1, l2) of Newton's terms, and the one-step error of
    the fit over that of Newton's order 1 (dB)."""
    steps = residuals.shape[1]
    normal, rhs = np.zeros((MAX_GAP + 1, 2, 2)), np.zeros((MAX_GAP + 1, 2))
    total, first_order = np.zeros(MAX_GAP + 1), np.zeros(MAX_GAP + 1)
    r = residuals.flatten(2)  # (branches, steps, samples * values)
    for x0 in range(2, steps - 1):
        for g1 in range(1, MAX_GAP + 1):
            for g2 in range(max(1, g1 - 1), g1 + 2):  # schedules space their FULLs evenly, to within a step
                if x0 - g1 - g2 < 0:
                    continue
                y0, y1, y2 = r[:, x0], r[:, x0 - g1], r[:, x0 - g1 - g2]
                for d in range(1, min(MAX_GAP, steps - 1 - x0) + 1):
                    n1, n2 = newton_terms(y0, y1, y2, g1, g2, d)
                    target = r[:, x0 + d] - y0
                    cross = float((n1 * n2).sum())
                    normal[d] += [[float((n1 * n1).sum()), cross], [cross, float((n2 * n2).sum())]]
                    rhs[d] += [float((target * n1).sum()), float((target * n2).sum())]
                    total[d] += float((target * target).sum())
                    first_order[d] += float(((target - n1) ** 2).sum())
    weights = np.zeros((MAX_GAP + 1, 2))
    weights[1:] = [np.linalg.solve(normal[d], rhs[d]) for d in range(1, MAX_GAP + 1)]
    fitted_error = total - np.einsum("di,di->d", weights, rhs)
    gain = np.zeros(MAX_GAP + 1)
    gain[1:] = 10 * np.log10(first_order[1:] / fitted_error[1:])
    return weights, gain


class FittedForecaster(Forecaster):
    """Order-2 forecasts with Newton's terms scaled by the fitted weights of the gap."""

    def __init__(self, weights: np.ndarray):
        super().__init__(2, "step", "fitted")
        self.weights = weights

    def extrapolated(self, state, name, sample, order, now):
        found = self.times(state, name, sample, order, now)
        if found is None or order != 2:
            return super().extrapolated(state, name, sample, order, now)
        (x0, x1, x2), at = found
        l1, l2 = self.weights[min(int(round(at - x0)), MAX_GAP)]
        history = [state.get(name, sample, ago) for ago in range(3)]
        out = []
        for y0, y1, y2 in zip(*history):
            n1, n2 = newton_terms(y0.float(), y1.float(), y2.float(), x0 - x1, x1 - x2, at - x0)
            out.append((y0.float() + l1 * n1 + l2 * n2).to(y0.dtype))
        return tuple(out)


def scored(pipe, policy, prompts, steps, guidance, reference, forecaster=None) -> tuple[float, float]:
    """(mean computed fraction, mean PSNR) of the uniform schedule, with `forecaster` in place of Newton's."""
    with cached(pipe, policy, num_inference_steps=steps) as runtime:
        if forecaster is not None:
            runtime.forecaster = runtime.validity.forecaster = forecaster
        frames = generate_batch(pipe, prompts, list(range(len(prompts))), steps, guidance)
        summary = cache_summary(pipe)
    fraction = sum(d.flops for d in summary.decisions) / sum(d.full_flops for d in summary.decisions)
    return fraction, float(np.mean([psnr(f, r) for f, r in zip(frames, reference)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--fractions", default="0.5,0.35,0.25,0.14")
    args = parser.parse_args()
    pipe = load_pipeline("toy-wan")
    weights, gain = fit(trajectories(pipe, list(load_split("train"))[: args.pairs], args.steps, args.guidance))
    print(f"\ntoy-wan, fitted on {args.pairs} train pairs, scored on {args.pairs} test pairs, {args.steps} steps, "
          f"guidance {args.guidance:g}; {machine_summary()}\n")
    print("| gap d (steps) | " + " | ".join(str(d) for d in range(1, MAX_GAP + 1)) + " |")
    print("|---|" + "---|" * MAX_GAP)
    print("| l1 (Newton: 1) | " + " | ".join(f"{w:.2f}" for w in weights[1:, 0]) + " |")
    print("| l2 (Newton: 1) | " + " | ".join(f"{w:.2f}" for w in weights[1:, 1]) + " |")
    print("| one-step error, fitted vs order 1 (dB) | " + " | ".join(f"{g:+.2f}" for g in gain[1:]) + " |")
    prompts = list(load_split("test"))[: args.pairs]
    reference, _ = timed_reference(pipe, prompts, list(range(args.pairs)), args.steps, args.guidance)
    print("\n| uniform fraction (computed) | reuse | Newton order 1 | Newton order 2 | fitted order 2 | fitted - best Newton |")
    print("|---|---|---|---|---|---|")
    for fraction in (float(f) for f in args.fractions.split(",")):
        runs = [scored(pipe, UniformCache(fraction=fraction, order=o), prompts, args.steps, args.guidance, reference)
                for o in (0, 1, 2)]
        fitted = scored(pipe, UniformCache(fraction=fraction, order=2), prompts, args.steps, args.guidance, reference,
                        FittedForecaster(weights))
        best = max(p for _, p in runs[1:])
        print(f"| {fraction:g} ({runs[0][0]:.3f}) | " + " | ".join(f"{p:.2f}" for _, p in runs)
              + f" | {fitted[1]:.2f} | {fitted[1] - best:+.2f} |")


if __name__ == "__main__":
    main()
