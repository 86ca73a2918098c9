"""Step-level decisions: choose one action per denoising step on the cond branch; the uncond branch follows.

The step-level action set is the runtime's: FULL (both branches compute), STEP and BLOCK_k (both branches
reuse the same way), CFG (cond computes, uncond is rebuilt from the cached CFG difference). Learned
policies and the gym environment decide at this granularity; subclasses implement `choose`.

Which step actions are allowed is tracked here from the policy's own history, the same way at training
and at inference: before the first FULL step only FULL is; CFG also needs an uncond branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cachepilot.runtime import CFG, FULL, Action, Signals

from .base import BasePolicy, block_layout


class StepLevelPolicy(BasePolicy):
    def __init__(self, actions: Sequence[Action]):
        self.actions = tuple(actions)
        if not self.actions or self.actions[0] != FULL:
            raise ValueError("a step-level action set starts with FULL")
        self.block_ks, self.back_blocks = block_layout(self.actions)
        self.reset()

    def reset(self) -> None:
        self._chosen: dict[int, tuple[int, Action]] = {}  # sample -> (step, step action)
        self._had_full: set[int] = set()
        self._has_uncond = False

    def step_mask(self, sample: int) -> np.ndarray:
        """Which of `actions` this sample may take at its next step."""
        if sample not in self._had_full:
            return np.array([a == FULL for a in self.actions])
        return np.array([a != CFG or self._has_uncond for a in self.actions])

    def choose(self, signals: list[Signals], masks: list[np.ndarray]) -> list[int]:
        """Indices into `actions`, one per cond sample (masks say which are allowed)."""
        raise NotImplementedError

    def decide_batch(self, signals: list[Signals], valid: list[tuple[Action, ...]]) -> list[Action]:
        cond = [i for i, s in enumerate(signals) if s.branch == "cond"]
        self._has_uncond = self._has_uncond or len(cond) < len(signals)
        if cond:
            picks = self.choose([signals[i] for i in cond], [self.step_mask(signals[i].sample) for i in cond])
            for i, pick in zip(cond, picks):
                action = self.actions[int(pick)]
                self._chosen[signals[i].sample] = (signals[i].step, action)
                if action == FULL:
                    self._had_full.add(signals[i].sample)
        plan = []
        for s, ok in zip(signals, valid):
            step, action = self._chosen.get(s.sample, (None, FULL))
            if step != s.step:  # the uncond branch called alone without a cond decision: compute it
                action = FULL
            elif action == CFG and s.branch == "cond":
                action = FULL
            plan.append(action if action in ok else FULL)
        return plan

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        return self.decide_batch([signals], [valid])[0]
