"""CacheEnv: one denoising generation per episode, one step per denoising step, gymnasium API."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from .episodes import CacheEpisodes, EpisodeConfig
from .spec import RunSpec


class CacheEnv(gym.Env):
    """Choose the cache action of every denoising step of a generation.

    `reset(seed)` draws a (prompt, seed) pair and a target budget (override with
    `options={"pair": i, "budget": b}`); each `step(action)` runs one denoising step, both CFG branches,
    under that action through the cache runtime. Actions index `env.actions` (FULL, STEP, CFG, BLOCK_k);
    `action_masks()` says which are valid (sb3-contrib's convention); an invalid one computes FULL and
    reports `info["invalid_action"]`; with `budget_guard=True` the masks also rule out what would take the
    episode past its budget (as a LearnedPolicy does at inference). The reward is documented in
    `cachepilot.envs.reward`; every term is in `info`. What it runs on is the `RunSpec` (model, pairs, steps,
    guidance, budgets), how it runs the `EpisodeConfig` (actions, quality metric, reward, budget guard).
    """

    metadata = {"render_modes": []}

    def __init__(self, spec: RunSpec | None = None, config: EpisodeConfig | None = None):
        self.episodes = CacheEpisodes(spec, config)
        self.observation_space = self.episodes.observation_space
        self.action_space = self.episodes.action_space
        self.actions = self.episodes.actions
        self.observation_spec = self.episodes.observation_spec
        self.episode = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episode = self.episodes.draw(self.np_random, options)
        obs, infos = self.episodes.begin([self.episode])
        return obs[0], infos[0]

    def step(self, action):
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        obs, rewards, done, infos = self.episodes.advance([action])
        if done:
            self.episode = None
        return obs[0], float(rewards[0]), done, False, infos[0]

    def action_masks(self) -> np.ndarray:
        if not self.episodes.masks:
            return self.episodes._terminal_mask()
        return self.episodes.masks[0].copy()

    def close(self):
        self.episodes.close()
