"""BatchedCacheEnv: N CacheEnv episodes in lockstep in one batched transformer call, as a stable-baselines3 VecEnv.

Samples whose action reuses are not computed (the runtime gathers the sub-batch that runs). Episodes all
last `steps` steps, so the N episodes end together and restart together (SB3's auto-reset). Env i seeded
with s + i draws exactly what `CacheEnv.reset(seed=s + i)` draws, so trajectories match N CacheEnvs.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv

from cachepilot import checks

from .episodes import CacheEpisodes, Episode, EpisodeConfig
from .spec import RunSpec


class SharedVecEnv(VecEnv):
    """The VecEnv attribute protocol where one object serves every environment index (a batch in lockstep)."""

    render_mode = None

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in self._indices(indices)]
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._indices(indices)]


class BatchedCacheEnv(SharedVecEnv):
    def __init__(self, spec: RunSpec | None = None, config: EpisodeConfig | None = None, num_envs: int = 8):
        num_envs = checks.count("num_envs", num_envs)
        self.episodes = CacheEpisodes(spec, config)
        self.actions = self.episodes.actions
        self.observation_spec = self.episodes.observation_spec
        super().__init__(num_envs, self.episodes.observation_space, self.episodes.action_space)
        self.rngs = [seeding.np_random(None)[0] for _ in range(num_envs)]  # env i draws its episodes with rngs[i]
        self._pending = None

    def reset(self):
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self.rngs[i] = seeding.np_random(seed)[0]
        # the batch shares one setting, drawn by the first environment
        setting = self.episodes.draw_setting(self.rngs[0], self._options[0])
        shared = {"steps": setting.steps, "guidance": setting.guidance}
        drawn = [self.episodes.draw(rng, (options or {}) | shared) for rng, options in zip(self.rngs, self._options)]
        obs, self.reset_infos = self.episodes.begin(drawn)
        self._reset_seeds()
        self._reset_options()
        return obs

    def snapshot(self) -> dict:
        """Where the environments stand between two steps: their generators and the episodes they have begun."""
        return {"rngs": [rng.bit_generator.state for rng in self.rngs],
                "episodes": [asdict(e) for e in self.episodes.episodes]}

    def restore(self, snapshot: dict) -> np.ndarray:
        """Stand where `snapshot` was taken (pending seeds are dropped): begin its episodes again; their observation."""
        self._reset_seeds()
        self._reset_options()
        for rng, state in zip(self.rngs, snapshot["rngs"]):
            rng.bit_generator.state = state
        obs, self.reset_infos = self.episodes.begin([Episode(**e) for e in snapshot["episodes"]])
        return obs

    def step_async(self, actions) -> None:
        self._pending = actions

    def step_wait(self):
        if self._pending is None:
            raise RuntimeError("step_async() must come before step_wait()")
        obs, rewards, done, infos = self.episodes.advance(self._pending)
        self._pending = None
        dones = np.full(self.num_envs, done)
        if done:
            for i, info in enumerate(infos):
                info["terminal_observation"] = obs[i]
                info["TimeLimit.truncated"] = False
            obs = self.reset()
        return obs, rewards.astype(np.float32), dones, infos

    def action_masks(self) -> np.ndarray:
        return np.stack(self.episodes.masks)

    def close(self) -> None:
        self.episodes.close()
