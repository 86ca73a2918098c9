"""Denoising episodes driven one step at a time: the pipeline runs as a coroutine that pauses at each decision.

The transformer's decision point is inside its forward (the runtime computes the signals there), so the
generation runs in a greenlet, a second call stack on the same OS thread: its step-level policy switches back
to the environment with the signals and resumes with the agent's actions. The generation is the family's
stepper (`cachepilot.models.stepping`), which computes exactly what the pipeline's `__call__` does, through the
same runtime hooks and signals; the oracle forks the same stepper. N episodes run in lockstep as one batched
generation, and the runtime computes only the samples whose action needs it.

Why a greenlet and not a worker thread: with torch running on two OS threads, libgomp sees more
OpenMP threads than cores and (GOMP_SPINCOUNT) its idle threads spin 100 times, not 300,000, before
they sleep, so every op waits for a futex wake-up; a toy-wan transformer call took 1.5-2.5x longer on
the worker thread than on the main thread (benchmarks/env_throughput.py prints it).
One OS thread keeps one OpenMP team.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from greenlet import getcurrent, greenlet

from cachepilot.models.stepping import generate_batch
from cachepilot.policies.observation import ObservationSpec
from cachepilot.policies.step_level import StepLevelPolicy
from cachepilot.runtime import Action, attach_runtime, remove_cache


class _Abort(BaseException):
    """Thrown into the pipeline to end an unfinished episode (BaseException: nothing in between swallows it)."""


def _jump(switch, *args):
    """Switch greenlets, keeping this side's torch grad mode: it is per OS thread, so greenlets share it, and
    the pipeline's `torch.no_grad()` must not leak into the caller (an SB3 update) while it is paused."""
    grad = torch.is_grad_enabled()
    try:
        return switch(*args)
    finally:
        torch.set_grad_enabled(grad)


class AgentPolicy(StepLevelPolicy):
    """A step-level policy whose choices come from the environment: it pauses the pipeline to ask."""

    name = "agent"

    def __init__(self, actions: tuple[Action, ...], spec: ObservationSpec):
        super().__init__(actions)
        self.signals = spec.signals_read

    def choose(self, signals, masks):
        env = getcurrent().parent
        if env is None:
            raise RuntimeError("AgentPolicy decides only inside an environment's episode")
        return _jump(env.switch, ("decide", signals, masks))


@dataclass
class Pause:
    """Where the episodes stand after a step: the next decision, or the end with the final frames."""

    step_costs: np.ndarray  # per sample, fraction of a full step computed in the step just finished
    signals: list | None = None  # per sample, the cond branch's signals at the next decision
    masks: list[np.ndarray] | None = None
    frames: np.ndarray | None = None  # (N, F, H, W, 3) in [0, 1] at the end
    latents: torch.Tensor | None = None  # (N, ...) after the step just finished (for trajectory shaping)

    @property
    def done(self) -> bool:
        return self.frames is not None


@dataclass
class _Ledger:
    seen: int = 0  # decisions of the runtime's summary already accounted for
    latents: torch.Tensor | None = None  # after the latest finished step


class Lockstep:
    def __init__(self, pipe, actions: tuple[Action, ...], spec: ObservationSpec, steps: int, guidance: float):
        self.pipe, self.steps, self.guidance = pipe, int(steps), float(guidance)
        self.policy = AgentPolicy(actions, spec)
        self.episode: greenlet | None = None  # the paused pipeline call
        self.runtime = None
        self._ledger = _Ledger()

    def start(self, prompts: list[str], seeds: list[int]) -> Pause:
        """Begin N episodes; returns the first decision (step 0)."""
        self.abort()
        self.pipe.set_progress_bar_config(disable=True)
        self.runtime = attach_runtime(self.pipe, self.policy, num_inference_steps=self.steps)
        self._ledger = _Ledger()
        self.episode = greenlet(self._work)
        return self._resume(self.episode.switch, list(prompts), list(seeds))

    def step(self, picks: list[int]) -> Pause:
        if self.episode is None:
            raise RuntimeError("no episode is running; call start() first")
        return self._resume(self.episode.switch, [int(p) for p in picks])

    def abort(self) -> None:
        """Stop an unfinished episode and take the hooks off the pipeline."""
        episode, self.episode = self.episode, None
        if episode is not None and not episode.dead:
            _jump(episode.throw, _Abort())
        if self.runtime is not None:
            remove_cache(self.pipe)
            self.runtime = None

    # ---- pipeline side ----------------------------------------------------------------------
    def _keep_latents(self, _step, latents):
        self._ledger.latents = latents.detach()

    def _work(self, prompts: list[str], seeds: list[int]):
        try:
            frames = generate_batch(self.pipe, prompts, seeds, self.steps, self.guidance, on_step=self._keep_latents)
        except _Abort:
            return ("aborted",)
        return ("done", np.asarray(frames))

    # ---- environment side -------------------------------------------------------------------
    def _resume(self, switch, *args) -> Pause:
        """Run the pipeline until its next decision or its end; a failure in it comes back here, hooks removed."""
        n = len(args[0])
        try:
            message = _jump(switch, *args)
        except BaseException:
            self.abort()
            raise
        costs = self._step_costs(n)
        latents = self._ledger.latents
        if message[0] == "done":
            self.abort()
            return Pause(costs, frames=message[1], latents=latents)
        _, signals, masks = message
        return Pause(costs, signals=list(signals), masks=list(masks), latents=latents)

    def _step_costs(self, n: int) -> np.ndarray:
        """Per sample, computed / full FLOPs over the decisions recorded since the last pause."""
        if self.runtime is None:
            return np.zeros(n)
        decisions = self.runtime.summary.decisions
        spent, full = np.zeros(n), np.zeros(n)
        for d in decisions[self._ledger.seen :]:
            spent[d.sample] += d.flops
            full[d.sample] += d.full_flops
        self._ledger.seen = len(decisions)
        return np.divide(spent, full, out=np.zeros(n), where=full > 0)
