"""Step-level decisions: one action per denoising step and sample, taken on the cond branch; the uncond branch
follows (the runtime applies it: CFG computes cond and rebuilds uncond, every other action is the same on both).

The action set is a fixed tuple (FULL first); the runtime says which of its actions are valid at each step, and
a subclass chooses among them in `choose`, for all samples of a call at once (a network decides a batch in one
forward; the environment hands the batch to the agent). Learned policies and the gym environment decide this way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cachepilot.runtime import FULL, Action, Signals

from .base import BasePolicy, block_layout


class StepLevelPolicy(BasePolicy):
    step_level = True

    def __init__(self, actions: Sequence[Action]):
        self.actions = tuple(actions)
        if not self.actions or self.actions[0] != FULL:
            raise ValueError("a step-level action set starts with FULL")
        self.block_ks, self.back_blocks, self.forecast_order = block_layout(self.actions)
        self._index = {a: i for i, a in enumerate(self.actions)}

    def choose(self, signals: list[Signals], masks: list[np.ndarray]) -> list[int]:
        """Indices into `actions`, one per sample (masks say which are valid now)."""
        raise NotImplementedError

    def decide_batch(self, signals: list[Signals], valid: list[tuple[Action, ...]]) -> list[Action]:
        masks = [self._mask(ok) for ok in valid]
        return [self.actions[int(pick)] for pick in self.choose(signals, masks)]

    def _mask(self, valid: tuple[Action, ...]) -> np.ndarray:
        mask = np.zeros(len(self.actions), dtype=bool)
        for action in valid:
            index = self._index.get(action)
            if index is not None:
                mask[index] = True
        return mask

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        return self.decide_batch([signals], [valid])[0]
