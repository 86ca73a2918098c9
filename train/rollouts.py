"""Rolling policies out through the environment core: the oracle teacher, a student network, scoring.

Collection talks to `CacheEpisodes` (what CacheEnv and BatchedCacheEnv share) directly: episodes are
chosen explicitly (pair, budget) and run in batches, with no auto-reset drawing fresh pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cachepilot.envs.episodes import CacheEpisodes
from cachepilot.policies.learned import PolicyNet, budget_mask, masked_argmax
from cachepilot.runtime import FULL, STEP

from .oracle import SegmentTable


class OracleTeacher:
    """The oracle's action from any state of an episode: FULL or STEP, by `SegmentTable.compute_now`."""

    def __init__(self, tables: dict[int, SegmentTable], actions, steps: int):
        self.tables, self.steps = tables, steps
        self.full, self.reuse = actions.index(FULL), actions.index(STEP)

    def act(self, pair: int, step: int, last_full: int, spent: float, budget: float) -> int:
        if step == 0:
            return self.full
        fulls_left = math.floor(budget * self.steps - spent + 1e-9)
        return self.full if self.tables[pair].compute_now(step, last_full, fulls_left) else self.reuse


@dataclass
class Rollouts:
    """What a batch of episodes saw and did; `labels` are the teacher's actions where a teacher was given."""

    obs: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    finals: list[dict] = field(default_factory=list)  # the last step's info of every episode

    def arrays(self) -> dict[str, np.ndarray]:
        return {"obs": np.stack(self.obs).astype(np.float32), "masks": np.stack(self.masks),
                "labels": np.asarray(self.labels, dtype=np.int64)}

    def summary(self, key: str = "psnr") -> dict:
        return {"episodes": len(self.finals), key: float(np.mean([f[key] for f in self.finals])),
                "computed_fraction": float(np.mean([f["computed_fraction"] for f in self.finals]))}


def student_picks(net: PolicyNet, core: CacheEpisodes, obs: np.ndarray, masks: np.ndarray, step: int,
                  spent: np.ndarray, budgets: list[float]) -> list[int]:
    """The network's choice among the valid actions that keep each episode within its budget."""
    num_blocks = core.num_blocks
    guard = np.stack([budget_mask(core.actions, num_blocks, step, s, b, core.steps) for s, b in zip(spent, budgets)])
    allowed = np.where((masks & guard).any(1, keepdims=True), masks & guard, masks)
    with torch.no_grad():
        return masked_argmax(net(torch.from_numpy(obs)), allowed)


def run_episodes(core: CacheEpisodes, jobs: list[tuple[int, float]], net: PolicyNet | None = None,
                 teacher: OracleTeacher | None = None, batch: int = 8, progress=None) -> Rollouts:
    """Run (pair, budget) episodes: the student acts when `net` is given, else the teacher; the teacher labels."""
    if net is None and teacher is None:
        raise ValueError("give a student network, a teacher, or both")
    out = Rollouts()
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        episodes = [core.draw(None, {"pair": p, "budget": b}) for p, b in chunk]
        obs, _ = core.begin(episodes)
        budgets = [e.budget for e in episodes]
        last_full, spent = np.zeros(len(chunk), dtype=int), np.zeros(len(chunk))
        for step in range(core.steps):
            masks = np.stack(core.masks)
            labels = None
            if teacher is not None:
                labels = [teacher.act(e.pair, step, int(last_full[i]), float(spent[i]), e.budget)
                          for i, e in enumerate(episodes)]
                out.labels += labels
                out.obs += list(obs)
                out.masks += list(masks)
            picks = labels if net is None else student_picks(net, core, obs, masks, step, spent, budgets)
            obs, _, done, infos = core.advance(picks)
            for i, info in enumerate(infos):
                spent[i] += info["step_cost"]
                if core.actions[picks[i]] == FULL:
                    last_full[i] = step
            if done:
                out.finals += infos
        if progress is not None:
            progress(len(chunk))
    return out
