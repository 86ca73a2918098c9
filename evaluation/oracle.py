"""The oracle: per (prompt, seed) and budget, a near-best FULL/STEP schedule found with the real model.

Segment-error graph. Node i: "FULL at step i". Edge i -> j: reuse step i's residuals (STEP) at steps
i+1..j-1 and compute again at j (j = N: the generation ends). Its error e(i, j) is the RMS distance of
the latents entering step j to the reference trajectory, measured by really running the
segment from the reference state at step i (the scheduler and the cache runtime are forked there). Every
segment from i is a prefix of one reuse rollout, so the whole table costs one reference generation plus
N short rollouts whose steps run no block.

`SegmentTable.plan(K)` solves the budgeted shortest path: the K FULL steps (step 0 among them) whose
summed segment errors are least. `SegmentTable.compute_now` answers the same question from any state a
student reaches (last FULL at s, now at t, k FULLs left): the DAgger relabelling rule.
The oracle decides at FULL / STEP granularity; the summed-error objective is a surrogate for the final
error, which is why the reported oracle numbers come from real rollouts of its schedules.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cachepilot.errors import CachepilotError
from cachepilot.io import read_or_set_aside
from cachepilot.policies.base import BasePolicy
from cachepilot.policies.schedule import FixedSchedule, full_steps_schedule
from cachepilot.runtime import FULL, STEP, attach_runtime, remove_cache

from .harness import run_method

DEFAULT_MAX_GAP = 12  # longest reuse run the oracle considers (steps between two FULLs)


class OracleUnsupported(CachepilotError):
    pass


def fulls_for_budget(budget: float, steps: int) -> int:
    """How many FULL steps fit a budget (a computed fraction of full compute)."""
    return max(1, math.floor(budget * steps + 1e-9))


@dataclass
class SegmentTable:
    """Measured segment errors of one (prompt, seed): errors[i, j] for FULL at i, next FULL at j (j = N: end)."""

    errors: np.ndarray  # (N, N + 1), inf where not measured (j <= i or j - i > max_gap)
    max_gap: int
    gain: np.ndarray | None = None  # (N + 1,) how much an error entering step j grows by the end (see `amplification`)

    def __post_init__(self):
        self.steps = self.errors.shape[0]
        if self.gain is None:
            self.gain = np.ones(self.steps + 1)
        self.cost = (self.errors * self.gain[None, :]) ** 2  # expected final-output squared error of a segment (adds up)
        self._value, self._next = self._solve()

    def _solve(self) -> tuple[np.ndarray, np.ndarray]:
        """value[j, k]: least error after a FULL at j with at most k more FULLs; nxt[j, k]: the next FULL (N: none)."""
        n, e = self.steps, self.cost
        value = np.full((n, n), np.inf)
        nxt = np.full((n, n), n, dtype=np.int64)
        value[:, 0] = e[:, n]
        for k in range(1, n):
            for j in range(n - 1, -1, -1):
                best, arg = value[j, k - 1], nxt[j, k - 1]
                for m in range(j + 1, min(j + self.max_gap, n - 1) + 1):
                    cand = e[j, m] + value[m, k - 1]
                    if cand < best:
                        best, arg = cand, m
                value[j, k], nxt[j, k] = best, arg
        return value, nxt

    def plan(self, fulls: int) -> list[int]:
        """The FULL steps (at most `fulls`, step 0 first) of the least summed segment error."""
        k = min(max(fulls, 1), self.steps) - 1
        if not np.isfinite(self._value[0, k]):
            raise ValueError(f"{fulls} FULL steps cannot cover {self.steps} steps with reuse runs of at most "
                             f"{self.max_gap} steps; raise max_gap or the budget")
        chosen, j = [0], 0
        while k > 0 and self._next[j, k] < self.steps:
            j, k = int(self._next[j, k]), k - 1
            chosen.append(j)
        return chosen

    def surrogate_error(self, full_steps: list[int]) -> float:
        ends = [*full_steps[1:], self.steps]
        return float(sum(self.cost[i, j] for i, j in zip(full_steps, ends)))

    def compute_now(self, step: int, last_full: int, fulls_left: int) -> bool:
        """From a state the oracle did not visit: should step `step` compute (last FULL at `last_full`)?"""
        if fulls_left < 1:
            return False
        if step - last_full >= self.max_gap:
            return True  # outside the measured table: reuse has gone on long enough
        n, e, value = self.steps, self.cost, self._value
        now = e[last_full, step] + value[step, fulls_left - 1]
        later = e[last_full, n] if n - last_full <= self.max_gap else np.inf
        for m in range(step + 1, min(last_full + self.max_gap, n - 1) + 1):
            later = min(later, e[last_full, m] + value[m, fulls_left - 1])
        return bool(now <= later)


class _Scripted(BasePolicy):
    """Whatever `action` says, for every row (FULL on the reference path, STEP in the forks)."""

    name = "oracle-probe"
    signals = frozenset()
    action = FULL

    def decide(self, signals, valid):
        return self.action


def _stepper(pipe):
    if not all(hasattr(pipe, m) for m in ("prepare_denoising", "denoise_step", "latents_to_frames")):
        raise OracleUnsupported(f"the oracle forks denoising mid-trajectory, which needs a pipeline that can be stepped "
                                f"(prepare_denoising / denoise_step, as ToyWanPipeline); {type(pipe).__name__} cannot")
    return pipe


def _distance(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per-sample RMS difference (absolute: early latents are mostly noise, so a relative error would be tiny
    there although it is carried to the end)."""
    return (x.float() - ref.float()).pow(2).flatten(1).mean(1).sqrt().numpy()


@torch.no_grad()
def measure_segments(pipe, pairs: list[tuple[str, int]], steps: int = 50, guidance: float = 5.0,
                     max_gap: int = DEFAULT_MAX_GAP, gain: np.ndarray | None = None) -> tuple[list[SegmentTable], np.ndarray]:
    """The segment-error table of each (prompt, seed), the pairs run as one batch, and the full-compute frames
    (bit-identical to the pipeline's uncached output, so they serve as references)."""
    pipe = _stepper(pipe)
    prompts, seeds = [p for p, _ in pairs], [s for _, s in pairs]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    policy = _Scripted()
    runtime = attach_runtime(pipe, policy, num_inference_steps=steps)
    scheduler = pipe.scheduler
    saved_scheduler = copy.deepcopy(vars(scheduler))
    errors = np.full((len(pairs), steps, steps + 1), np.inf)
    try:
        latents, embeds, negative, timesteps = pipe.prepare_denoising(
            prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators)
        reference, states = [latents], [None] * steps
        for i, t in enumerate(timesteps):  # the reference trajectory, computed first (the forks compare with it)
            policy.action = FULL
            reference.append(pipe.denoise_step(reference[-1], i, t, embeds, negative))
            states[i] = (copy.deepcopy(vars(scheduler)), runtime.snapshot())
        for i in range(steps):  # fork after the FULL at step i: reuse until the gap runs out
            errors[:, i, i + 1] = 0.0
            scheduler.__dict__ = copy.deepcopy(states[i][0])
            runtime.restore(states[i][1])
            policy.action = STEP
            x = reference[i + 1]
            for j in range(i + 1, min(i + max_gap, steps)):
                x = pipe.denoise_step(x, j, timesteps[j], embeds, negative)
                errors[:, i, j + 1] = _distance(x, reference[j + 1])
            states[i] = None
    finally:
        remove_cache(pipe)
        scheduler.__dict__ = saved_scheduler
    frames = pipe.latents_to_frames(reference[-1]).cpu().numpy().astype(np.float32)
    return [SegmentTable(errors[b], max_gap, gain) for b in range(len(pairs))], frames


def amplification(pipe, pairs: list[tuple[str, int]], steps: int = 50, guidance: float = 5.0, every: int = 4) -> np.ndarray:
    """gain[j]: final-output RMS error per unit of latent RMS error entering step j, for this model and scheduler.

    Early errors are carried and amplified by every later step (on toy-wan tens of times), late ones are
    not, so segment errors are weighted by it. Measured with single skips (STEP at step j - 1, FULL
    everywhere else) on a grid of every `every` steps, geometric mean over `pairs`, interpolated in log
    space; costs about steps / every generations per pair, once per model."""
    tables, reference = measure_segments(pipe, pairs, steps, guidance, max_gap=2)
    skips = list(range(1, steps, every))
    schedules = [[STEP if s == j else FULL for s in range(steps)] for j in skips for _ in pairs]
    results = rollout(pipe, pairs * len(skips), schedules, np.tile(reference, (len(skips), 1, 1, 1, 1)), steps, guidance)
    log_gain = np.zeros(len(skips))
    for g, j in enumerate(skips):
        ratios = []
        for b, table in enumerate(tables):
            final = 2 * 10 ** (-results[g * len(pairs) + b].psnr / 20)  # frame RMS -> latent units ([-1, 1])
            ratios.append(np.log(max(final, 1e-9) / max(table.errors[j - 1, j + 1], 1e-9)))
        log_gain[g] = np.mean(ratios)
    grid = np.array(skips) + 1  # the error of a skip at j enters step j + 1
    return np.exp(np.interp(np.arange(steps + 1), grid, log_gain))


def rollout(pipe, pairs: list[tuple[str, int]], schedules: list[list], reference: np.ndarray, steps: int,
            guidance: float, method: str = "oracle", knob: float = 0.0):
    """Real generations of per-sample schedules, scored against `reference` (frames of the same pairs)."""
    results, _ = run_method(pipe, FixedSchedule.per_sample(schedules), [p for p, _ in pairs], [s for _, s in pairs],
                            reference, steps, guidance, method, knob)
    return results


GAIN_FILE = "oracle_gain.npz"  # beside a model's weights, or in a training run directory


def stored_gain(path, model_hash: str, steps: int, guidance: float, log=print) -> np.ndarray | None:
    """An amplification profile saved at `path`, if it was measured for these weights, steps and guidance (a
    damaged file is set aside)."""
    stored = read_or_set_aside(path, lambda p: dict(np.load(p)), log)
    if stored is None:
        return None
    same = {"model_hash": model_hash, "steps": steps, "guidance": guidance}
    return stored["gain"] if all(k in stored and stored[k].item() == v for k, v in same.items()) else None
