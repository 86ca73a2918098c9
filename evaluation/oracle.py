"""The DP oracle: per (prompt, seed) and budget, the schedule of least summed segment error, and the teacher's rule.

Segment-error graph. Node i: "FULL at step i". Edge i -> j: reuse at steps i+1..j-1 and compute again at j (j = N:
the generation ends). Its error is the RMS distance of the latents entering step j to the reference trajectory,
measured by really running the segment from the reference state at step i (the scheduler and the cache runtime
are forked there). A reuse is STEP (error e(i, j)) or a first-order forecast STEP_F1 through the residuals of the
last two FULL steps h and i (error f(h, i, j)): the forecast's edge depends on the FULL before, so the state of the
DP is the pair of last FULL steps, as in DPCache's three-index cost table. Every segment from i is a prefix of one
rollout whose steps run no block, so the table costs one reference generation plus about N x (1 + max_gap) cheap
rollouts.

`SegmentTable.schedule(K)` solves the budgeted shortest path: the K FULL steps (step 0 among them) and each gap's
reuse whose summed segment errors are least. `SegmentTable.act` answers the same question from any state a student
reaches (last FULLs at h and s, now at t, k FULLs left): the DAgger relabelling rule. Segment errors do not add
up exactly (they compound), so this is a surrogate: the oracle the ablation reports is the searched one
(`evaluation.search`), which starts from this schedule among others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cachepilot.io import read_or_set_aside
from cachepilot.models.stepping import generation_options, stepper_for
from cachepilot.policies.base import BasePolicy
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.runtime import FULL, STEP, Action, cached

from .harness import ScoredPairs, run_method

DEFAULT_MAX_GAP = 12  # longest reuse run the oracle considers (steps between two FULLs)


def fulls_for_budget(budget: float, steps: int) -> int:
    """How many FULL steps fit a budget (a computed fraction of full compute)."""
    return max(1, math.floor(budget * steps + 1e-9))


@dataclass
class SegmentTable:
    """Measured segment errors of one (prompt, seed).

    errors[i, j]: FULL at i, STEP until the next FULL at j (j = N: the end). forecast[i, g, j] (optional): the same
    with every reuse a first-order forecast (STEP_F1) through the FULL residuals at h = i - g - 1 and i. A forecast
    needs the FULL before the latest, so the DP's state is the last two FULL steps; each edge takes whichever reuse
    measured the smaller error."""

    errors: np.ndarray  # (N, N + 1), inf where not measured (j <= i or j - i > max_gap)
    max_gap: int
    gain: np.ndarray | None = None  # (N + 1,) how much an error entering step j grows by the end (see `amplification`)
    forecast: np.ndarray | None = None  # (N, max_gap, N + 1), inf where not measured

    def __post_init__(self):
        self.steps = n = self.errors.shape[0]
        g = self.max_gap
        if self.gain is None:
            self.gain = np.ones(n + 1)
        self.step_cost = (self.errors * self.gain[None, :]) ** 2  # expected final-output squared error (adds up)
        self.forecast_cost = (np.full((n, g, n + 1), np.inf) if self.forecast is None
                              else (self.forecast * self.gain[None, None, :]) ** 2)
        # cost[i, g, j] for g < max_gap: the previous FULL at i - g - 1; g = max_gap: none within reach (STEP only)
        step = np.broadcast_to(self.step_cost[:, None, :], (n, g + 1, n + 1))
        forecast = np.concatenate([self.forecast_cost, np.full((n, 1, n + 1), np.inf)], axis=1)
        self.cost = np.minimum(step, forecast)
        self.reuse = np.where(forecast < step, STEP.forecasting(1), STEP)  # the reuse each edge takes
        self._value, self._next = self._solve()

    def _solve(self) -> tuple[np.ndarray, np.ndarray]:
        """value[i, g, k]: least error after a FULL at i (the one before at i - g - 1) with at most k more FULLs;
        nxt[i, g, k]: the next FULL (N: none)."""
        n, gap, cost = self.steps, self.max_gap, self.cost
        value = np.full((n, gap + 1, n), np.inf)
        nxt = np.full((n, gap + 1, n), n, dtype=np.int64)
        value[:, :, 0] = cost[:, :, n]
        for k in range(1, n):
            for i in range(n - 1, -1, -1):
                best, arg = value[i, :, k - 1].copy(), nxt[i, :, k - 1].copy()
                for m in range(i + 1, min(i + gap, n - 1) + 1):
                    cand = cost[i, :, m] + value[m, m - i - 1, k - 1]
                    better = cand < best
                    best[better], arg[better] = cand[better], m
                value[i, :, k], nxt[i, :, k] = best, arg
        return value, nxt

    def _gap(self, last_full: int, previous_full: int | None) -> int:
        """The state index of the FULL before the latest."""
        if previous_full is None or last_full - previous_full > self.max_gap:
            return self.max_gap
        return last_full - previous_full - 1

    def schedule(self, fulls: int) -> list[Action]:
        """The step-level schedule of the least summed segment error with at most `fulls` FULL steps."""
        k = min(max(fulls, 1), self.steps) - 1
        if not np.isfinite(self._value[0, self.max_gap, k]):
            raise ValueError(f"{fulls} FULL steps cannot cover {self.steps} steps with reuse runs of at most "
                             f"{self.max_gap} steps; raise max_gap or the budget")
        actions, i, g = [FULL], 0, self.max_gap
        while True:
            m = int(self._next[i, g, k]) if k > 0 else self.steps
            actions += [self.reuse[i, g, m]] * (m - i - 1)
            if m == self.steps:
                return actions
            actions.append(FULL)
            i, g, k = m, m - i - 1, k - 1

    def surrogate_error(self, schedule: list[Action]) -> float:
        """The summed segment costs of a FULL / STEP / STEP_F1 schedule."""
        fulls = [i for i, a in enumerate(schedule) if a == FULL]
        total, previous = 0.0, None
        for i, j in zip(fulls, [*fulls[1:], self.steps]):
            g = self._gap(i, previous)
            if j > i + 1 and schedule[i + 1] != STEP:
                total += float(self.forecast_cost[i, g, j]) if g < self.max_gap else np.inf
            else:
                total += float(self.step_cost[i, j])
            previous = i
        return total

    def act(self, step: int, last_full: int, previous_full: int | None, fulls_left: int,
            reached: "ReachedSegments | None" = None) -> Action:
        """From a state the oracle did not visit (last FULLs at `previous_full` and `last_full`, `fulls_left` more
        allowed): FULL now, or the reuse of the segment it would rather continue. With `reached`, the segment
        under way is costed as measured from the state the student really reached (`measure_reached`); the
        segments after it come from the table."""
        g = self._gap(last_full, previous_full)
        row, kinds = ((reached.cost[last_full], reached.reuse[last_full]) if reached is not None
                      else (self.cost[last_full, g], self.reuse[last_full, g]))
        if fulls_left < 1:
            return kinds[self.steps]
        if step - last_full >= self.max_gap:
            return FULL  # outside the measured table: reuse has gone on long enough
        n, value = self.steps, self._value
        now = row[step] + value[step, step - last_full - 1, fulls_left - 1]
        later, where = (row[n], n) if n - last_full <= self.max_gap else (np.inf, n)
        for m in range(step + 1, min(last_full + self.max_gap, n - 1) + 1):
            cand = row[m] + value[m, m - last_full - 1, fulls_left - 1]
            if cand < later:
                later, where = cand, m
        return FULL if now <= later else kinds[where]


@dataclass
class ReachedSegments:
    """Segment costs measured from the states one student episode reached (`measure_reached`).

    cost[s, j]: after the student's FULL at s, reuse until the next FULL at j: how much that adds to the
    gain-weighted error of the latents entering j beyond the error the student carried into s + 1, squared (the
    table's unit). The carried error is subtracted as an amplitude, not a square: along one trajectory the errors
    point much the same way (a reuse run from a drifted state measures several times the table's squared cost),
    and a squared difference would charge the segment under way for a compounding the table's later segments are not
    charged for. reuse[s, j]: the reuse that measured it (STEP, or STEP_F1 through the student's own last two FULLs). Rows
    of steps the student did not compute are inf."""

    cost: np.ndarray  # (N, N + 1)
    reuse: np.ndarray  # (N, N + 1) of Action


class _Scripted(BasePolicy):
    """Whatever `action` says, for every row (FULL on the reference path, STEP in the forks)."""

    name = "oracle-probe"
    signals = frozenset()
    action = FULL

    def decide(self, signals, valid):
        return self.action


def _prepare(stepper, pairs: list[tuple[str, int]], steps: int, guidance: float):
    """The denoising state before step 0 of the pairs, as one batch (seeded as every generation here is)."""
    return stepper.prepare([p for p, _ in pairs], [torch.Generator().manual_seed(s) for _, s in pairs], steps,
                           guidance, **generation_options(stepper.pipe))


def _distance(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per-sample RMS difference (absolute: early latents are mostly noise, so a relative error would be tiny
    there although it is carried to the end)."""
    return (x.float() - ref.float()).pow(2).flatten(1).mean(1).sqrt().numpy()


@torch.no_grad()
def measure_segments(pipe, pairs: list[tuple[str, int]], steps: int = 50, guidance: float = 5.0,
                     max_gap: int = DEFAULT_MAX_GAP, gain: np.ndarray | None = None,
                     forecast: bool = False) -> tuple[list[SegmentTable], np.ndarray]:
    """The segment-error table of each (prompt, seed), the pairs run as one batch, and the full-compute frames
    (bit-identical to the pipeline's uncached output, so they serve as references). With `forecast`, also the
    first-order forecast segments: for FULL steps h < i, the fork at i is given h's residuals as the ones before
    the latest (`CacheRuntime.graft_history`), then forecasts until the gap runs out."""
    stepper = stepper_for(pipe)
    policy = _Scripted()
    policy.forecast_order = int(forecast)
    errors = np.full((len(pairs), steps, steps + 1), np.inf)
    forecasts = np.full((len(pairs), steps, max_gap, steps + 1), np.inf) if forecast else None
    with cached(pipe, policy, num_inference_steps=steps) as runtime:
        state = _prepare(stepper, pairs, steps, guidance)
        reference, states = [state.latents], [None] * steps
        for i in range(steps):  # the reference trajectory, computed first (the forks compare with it)
            policy.action = FULL
            reference.append(stepper.step(state).latents)
            states[i] = (stepper.fork(state), runtime.snapshot())

        def fork(i: int, action: Action, older=None) -> Iterator[tuple[int, np.ndarray]]:
            """Reuse with `action` after the FULL at step i until the gap runs out: (j, error entering j)."""
            branch = stepper.fork(states[i][0])
            runtime.restore(states[i][1])
            if older is not None:
                runtime.graft_history(older)
            policy.action = action
            for j in range(i + 1, min(i + max_gap, steps)):
                x = stepper.step(branch).latents
                yield j + 1, _distance(x, reference[j + 1])

        for i in range(steps):
            errors[:, i, i + 1] = 0.0
            for j, error in fork(i, STEP):
                errors[:, i, j] = error
            for h in range(max(0, i - max_gap), i) if forecast else ():
                forecasts[:, i, i - h - 1, i + 1] = 0.0
                for j, error in fork(i, STEP.forecasting(1), states[h][1]):
                    forecasts[:, i, i - h - 1, j] = error
            if i >= max_gap:
                states[i - max_gap] = None  # no later fork grafts from it
        frames = stepper.decode(state)
    return [SegmentTable(errors[b], max_gap, gain, None if forecasts is None else forecasts[b])
            for b in range(len(pairs))], frames


class _Replay(FixedSchedule):
    """Each sample follows its own schedule (the trajectory a student took), unless `override` is set: then every
    row takes it (a fork), or STEP where the row lacks the history of its forecast."""

    override: Action | None = None

    def decide(self, signals, valid):
        if self.override is None:
            return super().decide(signals, valid)
        return self.override if self.override in valid else STEP


@torch.no_grad()
def reference_latents(pipe, pairs: list[tuple[str, int]], steps: int = 50, guidance: float = 5.0) -> torch.Tensor:
    """(pairs, steps + 1, ...): the uncached latents entering every step, and the final ones."""
    stepper = stepper_for(pipe)
    state = _prepare(stepper, pairs, steps, guidance)
    trajectory = [state.latents]
    for _ in range(steps):
        trajectory.append(stepper.step(state).latents)
    return torch.stack(trajectory, 1)


@torch.no_grad()
def measure_reached(pipe, pairs: list[tuple[str, int]], schedules: list[list[Action]], reference: torch.Tensor,
                    gain: np.ndarray, steps: int = 50, guidance: float = 5.0,
                    max_gap: int = DEFAULT_MAX_GAP) -> list[ReachedSegments]:
    """Segment costs from the states students reached: sample b replays `schedules[b]` (the step-level actions its
    student took) and, after each of its FULL steps, runs STEP and STEP_F1 from its own latents and caches until
    the gap runs out, measured against `reference` (`reference_latents` of the same pairs). All samples run as
    one batch; forks run only at steps where some sample computed."""
    stepper = stepper_for(pipe)
    policy = _Replay.per_sample(schedules)
    policy.forecast_order = max(policy.forecast_order, 1)
    reuses = (STEP, STEP.forecasting(1))
    errors = np.full((len(reuses), len(pairs), steps, steps + 1), np.inf)
    carried = np.zeros((len(pairs), steps + 1))  # the student's own error entering each step
    with cached(pipe, policy, num_inference_steps=steps) as runtime:
        state = _prepare(stepper, pairs, steps, guidance)
        for i in range(steps):
            policy.override = None
            stepper.step(state)
            carried[:, i + 1] = _distance(state.latents, reference[:, i + 1])
            if not any(s[i] == FULL for s in schedules):
                continue
            here = runtime.snapshot()
            for r, action in enumerate(reuses):
                branch = stepper.fork(state)
                runtime.restore(here)
                policy.override = action
                errors[r, :, i, i + 1] = carried[:, i + 1]
                for j in range(i + 1, min(i + max_gap, steps)):
                    errors[r, :, i, j + 1] = _distance(stepper.step(branch).latents, reference[:, j + 1])
            runtime.restore(here)
    weighted = errors * gain[None, None, None, :]
    added = np.maximum(weighted - (carried[:, 1:] * gain[1:])[None, :, :, None], 0.0) ** 2
    added = np.where(np.isfinite(weighted), added, np.inf)
    pick = np.argmin(added, axis=0)
    found = []
    for b, schedule in enumerate(schedules):
        cost = np.min(added[:, b], axis=0)
        cost[[i for i, a in enumerate(schedule) if a != FULL]] = np.inf
        found.append(ReachedSegments(cost, np.array(reuses, dtype=object)[pick[b]]))
    return found


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
    scored = ScoredPairs([p for p, _ in pairs], [s for _, s in pairs], steps, guidance, reference)
    results, _ = run_method(pipe, FixedSchedule.per_sample(schedules), scored, method, knob)
    return results


GAIN_FILE = "oracle_gain.npz"  # beside a model's weights, or in a training run directory


def carried_gain(gain: np.ndarray, steps: int) -> np.ndarray:
    """An amplification profile carried to another step count by the fraction of the generation (it is a function of
    the noise level, which the fraction fixes for a given scheduler shift), interpolated in log space."""
    return np.exp(np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, len(gain)), np.log(gain)))


def stored_gain(path, model_hash: str, steps: int, guidance: float, log=print,
                carry: bool = False) -> np.ndarray | None:
    """An amplification profile saved at `path`, if it was measured for these weights, steps and guidance; with
    `carry`, one measured for these weights at another setting, carried to `steps` (`carried_gain`). A damaged file
    is set aside."""
    stored = read_or_set_aside(path, lambda p: dict(np.load(p)), log)
    if stored is None or "model_hash" not in stored or stored["model_hash"].item() != model_hash:
        return None
    if all(k in stored and stored[k].item() == v for k, v in {"steps": steps, "guidance": guidance}.items()):
        return stored["gain"]
    return carried_gain(stored["gain"], steps) if carry else None
