"""ShardedCacheEnv: a VecEnv of `num_envs` environments in groups, each group one `BatchedCacheEnv` (one batched
transformer call per step), the groups dealt out over the processes of a `Shard`.

Every process sees every environment: each steps its own groups and the observations, rewards, dones, infos and
action masks are gathered in group order. So a stable-baselines3 algorithm on every process collects the same
rollouts and makes the same update, and the result is one process's that steps the same groups one after the other
(a sample's output depends, in its last bits, on the batch it ran in: the groups, not the processes, fix it). One
group of every environment is a `BatchedCacheEnv`, as one process runs it by default.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.parallel import Shard

from .batched import BatchedCacheEnv, SharedVecEnv
from .episodes import EpisodeConfig
from .spec import RunSpec


class ShardedCacheEnv(SharedVecEnv):
    def __init__(self, spec: RunSpec, config: EpisodeConfig | None = None, num_envs: int = 8,
                 group: int | None = None, shard: Shard = Shard()):
        num_envs = checks.count("num_envs", num_envs)
        group = checks.count("group", group) if group is not None else math.ceil(num_envs / shard.world)
        self.shard, self.starts = shard, list(range(0, num_envs, group))
        self.sizes = [min(group, num_envs - lo) for lo in self.starts]
        self.mine = shard.take(range(len(self.starts)))  # the groups this process steps
        if not self.mine:
            raise InvalidInputError(f"{num_envs} environments in groups of {group} leave process "
                                           f"{shard.rank + 1} of {shard.world} without one; use more environments")
        # a group after the first loads its own pipeline: a lockstep generation keeps its pipeline hooked between steps
        self.groups = {g: BatchedCacheEnv(spec if k == 0 else replace(spec, pipe=spec.model.load()), config,
                                          self.sizes[g]) for k, g in enumerate(self.mine)}
        first = self.groups[self.mine[0]]
        self.episodes, self.actions, self.observation_spec = first.episodes, first.actions, first.observation_spec
        super().__init__(num_envs, first.observation_space, first.action_space)

    def _spread(self, name: str) -> None:
        """Hand this VecEnv's pending seeds or options (`_seeds`, `_options`) to the groups, by environment index."""
        values = getattr(self, name)
        for g, env in self.groups.items():
            setattr(env, name, values[self.starts[g] : self.starts[g] + self.sizes[g]])

    def reset(self):
        self._spread("_seeds")
        self._spread("_options")
        parts = self.shard.in_order((g, (env.reset(), env.reset_infos)) for g, env in self.groups.items())
        self.reset_infos = [info for _, infos in parts for info in infos]
        self._reset_seeds()
        self._reset_options()
        return np.concatenate([obs for obs, _ in parts])

    def step_async(self, actions) -> None:
        actions = np.asarray(actions)
        for g, env in self.groups.items():
            env.step_async(actions[self.starts[g] : self.starts[g] + self.sizes[g]])

    def step_wait(self):
        parts = self.shard.in_order((g, env.step_wait()) for g, env in self.groups.items())
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]), [info for p in parts for info in p[3]])

    def action_masks(self) -> np.ndarray:
        return np.concatenate(self.shard.in_order((g, env.action_masks()) for g, env in self.groups.items()))

    def snapshot(self) -> dict:
        """Every group's `BatchedCacheEnv.snapshot`, in group order (a collective: every process calls it)."""
        return {"groups": self.shard.in_order((g, env.snapshot()) for g, env in self.groups.items()),
                "sizes": self.sizes}

    def restore(self, snapshot: dict) -> np.ndarray:
        """Stand where `snapshot` was taken; the observations of every environment. A `BatchedCacheEnv`'s own
        snapshot is that of one group."""
        if "groups" not in snapshot:
            snapshot = {"groups": [snapshot], "sizes": [len(snapshot["rngs"])]}
        if snapshot["sizes"] != self.sizes:
            raise ValueError(f"a snapshot of environments in groups of {snapshot['sizes']}, not {self.sizes}")
        self._reset_seeds()
        self._reset_options()
        restored = self.shard.in_order((g, env.restore(snapshot["groups"][g])) for g, env in self.groups.items())
        return np.concatenate(restored)

    def close(self) -> None:
        for env in self.groups.values():
            env.close()
