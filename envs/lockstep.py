"""Denoising episodes driven one step at a time: the pipeline runs on a worker thread and pauses at each decision.

The transformer's decision point is inside its forward (the runtime computes the signals there), so the
real pipeline runs on a worker thread whose step-level policy hands the signals to the environment and
waits for the agent's actions. Exactly the code path of inference: the same pipeline `__call__`, the
same runtime hooks, the same signals. N episodes run in lockstep as one batched pipeline call, and the
runtime computes only the samples whose action needs it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from cachepilot.policies.observation import ObservationSpec
from cachepilot.policies.step_level import StepLevelPolicy
from cachepilot.runtime import Action, apply_cache, remove_cache


class _Abort(BaseException):
    """Raised inside the worker to end an unfinished episode (BaseException: nothing in between swallows it)."""


class AgentPolicy(StepLevelPolicy):
    """A step-level policy whose choices come from the environment, across the thread hand-off."""

    name = "agent"

    def __init__(self, actions: tuple[Action, ...], spec: ObservationSpec):
        super().__init__(actions)
        self.signals = spec.signals_read
        self.needs_modulated_input = spec.needs_modulated_input
        self.to_env: queue.Queue = queue.Queue()
        self.to_worker: queue.Queue = queue.Queue()

    def choose(self, signals, masks):
        self.to_env.put(("decide", signals, masks))
        picks = self.to_worker.get()
        if picks is None:
            raise _Abort
        return picks


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
        self.thread: threading.Thread | None = None
        self.runtime = None
        self._ledger = _Ledger()

    def start(self, prompts: list[str], seeds: list[int]) -> Pause:
        """Begin N episodes; returns the first decision (step 0)."""
        self.abort()
        self.pipe.set_progress_bar_config(disable=True)
        self.runtime = apply_cache(self.pipe, self.policy, num_inference_steps=self.steps)
        self._ledger = _Ledger()
        self.thread = threading.Thread(target=self._work, args=(list(prompts), list(seeds)), daemon=True)
        self.thread.start()
        return self._wait(len(prompts))

    def step(self, picks: list[int]) -> Pause:
        if self.thread is None:
            raise RuntimeError("no episode is running; call start() first")
        self.policy.to_worker.put([int(p) for p in picks])
        return self._wait(len(picks))

    def abort(self) -> None:
        """Stop an unfinished episode and take the hooks off the pipeline."""
        if self.thread is not None:
            if self.thread.is_alive():
                self.policy.to_worker.put(None)
            self.thread.join()
            self.thread = None
        for q in (self.policy.to_env, self.policy.to_worker):
            while not q.empty():
                q.get_nowait()
        if self.runtime is not None:
            remove_cache(self.pipe)
            self.runtime = None

    # ---- worker side ------------------------------------------------------------------------
    def _keep_latents(self, _pipe, _i, _t, kwargs):
        self._ledger.latents = kwargs["latents"].detach()
        return kwargs

    def _work(self, prompts: list[str], seeds: list[int]) -> None:
        try:
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            frames = self.pipe(prompt=prompts, num_inference_steps=self.steps, guidance_scale=self.guidance,
                               generator=generators, output_type="np", callback_on_step_end=self._keep_latents).frames
            self.policy.to_env.put(("done", np.asarray(frames)))
        except _Abort:
            pass
        except BaseException as err:  # hand any failure to the environment's thread
            self.policy.to_env.put(("error", err))

    # ---- env side ---------------------------------------------------------------------------
    def _wait(self, n: int) -> Pause:
        message = self.policy.to_env.get()
        costs = self._step_costs(n)
        latents = self._ledger.latents
        if message[0] == "error":
            self.thread.join()
            self.thread = None
            self.abort()
            raise message[1]
        if message[0] == "done":
            self.thread.join()
            self.thread = None
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
