"""Rolling policies out through the environments' episodes: the oracle teacher, a student network, scoring.

Collection talks to `CacheEpisodes` (what CacheEnv and BatchedCacheEnv share) directly: episodes are
chosen explicitly (pair, budget) and run in batches, with no auto-reset drawing fresh pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cachepilot.envs.episodes import CacheEpisodes
from cachepilot.evaluation.oracle import ReachedSegments, SegmentTable, measure_reached
from cachepilot.parallel import Shard
from cachepilot.policies.learned import PolicyNet, masked_argmax, within_budget
from cachepilot.runtime import FULL, STEP, Action


class ScheduleFollower:
    """One schedule as a teacher, kept in step with its spending rather than its step indices, so a student that
    took a FULL late or early is taught to catch up. `num_blocks` prices the schedule's actions."""

    def __init__(self, schedule: list[Action], actions, num_blocks: int):
        self.schedule, self.actions = list(schedule), tuple(actions)
        self.spending = np.cumsum([0.0] + [a.step_cost(num_blocks) for a in self.schedule])

    def act(self, step: int, spent: float, valid: np.ndarray | None = None) -> int:
        """The schedule's action at `step`. Half a FULL or more behind what the schedule had computed by now, it
        computes; as far ahead, it reuses where the schedule computes. An action not valid here falls back to its
        plain reuse (no forecast history yet) or to the reuse the schedule takes next (a FULL the budget no
        longer allows), else STEP."""
        schedule, lead = self.schedule, spent - self.spending[step]
        wanted, after = schedule[step], next((a for a in schedule[step + 1 :] if a.reuses), STEP)
        if wanted.reuses and lead <= -0.5:
            wanted = FULL
        elif not wanted.reuses and lead >= 0.5:
            wanted = after
        for action in (wanted, wanted.forecasting(0) if wanted.reuses else after, after.forecasting(0), STEP):
            if action in self.actions and (valid is None or valid[self.actions.index(action)]):
                return self.actions.index(action)
        return self.actions.index(STEP)


class OracleTeacher:
    """The oracle's action from any state of an episode, by `SegmentTable.act`: FULL, or the reuse its plan
    continues with (STEP, or STEP_F1 where the action set has it). At a budget in `schedules` it follows that
    budget's searched shared schedule instead (`ScheduleFollower`), the teacher where the table's costs stop
    adding up."""

    def __init__(self, tables: dict[int, SegmentTable], actions, steps: int, num_blocks: int,
                 schedules: dict[float, list[Action]] | None = None):
        self.tables, self.steps, self.actions = tables, steps, tuple(actions)
        self.followers = {b: ScheduleFollower(s, self.actions, num_blocks) for b, s in (schedules or {}).items()}

    def act(self, pair: int, step: int, last_full: int, previous_full: int | None, spent: float, budget: float,
            reached: ReachedSegments | None = None, valid: np.ndarray | None = None) -> int:
        follower = next((f for b, f in self.followers.items() if abs(b - budget) < 1e-9), None)
        if follower is not None:
            return follower.act(step, spent, valid)
        if step == 0:
            return self.actions.index(FULL)
        fulls_left = math.floor(budget * self.steps - spent + 1e-9)
        action = self.tables[pair].act(step, last_full, previous_full, fulls_left, reached)
        return self.actions.index(action if action in self.actions else STEP)


@dataclass
class Visit:
    """Where an episode stood at one decision, as the teacher's rule reads it."""

    episode: int
    step: int
    last_full: int
    previous_full: int | None
    spent: float


@dataclass
class Rollouts:
    """What the episodes saw (observations, valid-action masks) and what the teacher would have done there."""

    obs: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)  # per label, the state it was given in
    jobs: list[tuple[int, float]] = field(default_factory=list)  # per episode, (pair, budget)
    taken: list[list[int]] = field(default_factory=list)  # per episode, the action index of each step

    @classmethod
    def joined(cls, parts: list["Rollouts"]) -> "Rollouts":
        """The parts one after the other, as one collection of them in that order."""
        out = cls()
        for part in parts:
            for name in ("obs", "masks", "labels", "visits", "jobs", "taken"):
                getattr(out, name).extend(getattr(part, name))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"obs": np.stack(self.obs).astype(np.float32), "masks": np.stack(self.masks),
                "labels": np.asarray(self.labels, dtype=np.int64)}


def student_picks(net: PolicyNet, episodes: CacheEpisodes, obs: np.ndarray, masks: np.ndarray, step: int,
                  spent: np.ndarray, budgets: list[float]) -> list[int]:
    """The network's choice among the valid actions that keep each episode within its budget."""
    allowed = np.stack([within_budget(m, episodes.actions, episodes.num_blocks, step, s, b, episodes.steps)
                        for m, s, b in zip(masks, spent, budgets)])
    with torch.no_grad():
        return masked_argmax(net(torch.from_numpy(obs)), allowed)


def run_episodes(episodes: CacheEpisodes, jobs: list[tuple[int, float]], teacher: OracleTeacher,
                 net: PolicyNet | None = None, batch: int = 8, setting=None, shard: Shard = Shard()) -> Rollouts:
    """Run (pair, budget) episodes at `setting` (None: the spec's primary one), `batch` at a time: the student acts
    when `net` is given, else the teacher; the teacher labels every state. Over several processes (`shard`) each runs
    every world-th batch and every process returns all of them, in order: what one process collects."""
    parts = [(start, _run_batch(episodes, jobs[start : start + batch], start, teacher, net, setting))
             for start in shard.take(range(0, len(jobs), batch))]
    return Rollouts.joined(shard.in_order(parts))


def _run_batch(episodes: CacheEpisodes, chunk: list[tuple[int, float]], first: int, teacher: OracleTeacher,
               net: PolicyNet | None, setting) -> Rollouts:
    """One batch of episodes, the first of them episode `first` of the collection."""
    out = Rollouts()
    at = {} if setting is None else {"steps": setting.steps, "guidance": setting.guidance}
    drawn = [episodes.draw(None, {"pair": p, "budget": b} | at) for p, b in chunk]
    obs, _ = episodes.begin(drawn)
    budgets = [e.budget for e in drawn]
    last_full, previous_full, spent = [0] * len(chunk), [None] * len(chunk), np.zeros(len(chunk))
    out.jobs += [(e.pair, e.budget) for e in drawn]
    out.taken += [[] for _ in drawn]
    for step in range(episodes.steps):
        masks = np.stack(episodes.masks)
        labels = [teacher.act(e.pair, step, last_full[i], previous_full[i], float(spent[i]), e.budget,
                              valid=masks[i]) for i, e in enumerate(drawn)]
        out.labels += labels
        out.obs += list(obs)
        out.masks += list(masks)
        out.visits += [Visit(first + i, step, last_full[i], previous_full[i], float(spent[i]))
                       for i in range(len(chunk))]
        picks = labels if net is None else student_picks(net, episodes, obs, masks, step, spent, budgets)
        obs, _, _, infos = episodes.advance(picks)
        for i, info in enumerate(infos):
            out.taken[i].append(int(picks[i]))
            spent[i] += info["step_cost"]
            if episodes.actions[picks[i]] == FULL and step > 0:
                last_full[i], previous_full[i] = step, last_full[i]
    return out


def relabel_from_reached(episodes: CacheEpisodes, rollouts: Rollouts, teacher: OracleTeacher, reference,
                         gain: np.ndarray, max_gap: int, batch: int = 16) -> int:
    """Relabel every state of the episodes with the segment under way measured from the state the episode really
    reached (`measure_reached`), instead of from the reference trajectory; `reference`: `reference_latents` per
    pair. Returns how many labels changed."""
    reached: list[ReachedSegments] = []
    for start in range(0, len(rollouts.jobs), batch):
        jobs = rollouts.jobs[start : start + batch]
        schedules = [[episodes.actions[a] for a in taken] for taken in rollouts.taken[start : start + batch]]
        reached += measure_reached(episodes.pipe, [episodes.pairs[p] for p, _ in jobs], schedules,
                                   reference[[p for p, _ in jobs]], gain, episodes.steps, episodes.guidance, max_gap)
    changed = 0
    for n, visit in enumerate(rollouts.visits):
        pair, budget = rollouts.jobs[visit.episode]
        label = teacher.act(pair, visit.step, visit.last_full, visit.previous_full, visit.spent, budget,
                            reached[visit.episode], valid=rollouts.masks[n])
        changed += label != rollouts.labels[n]
        rollouts.labels[n] = label
    return changed
