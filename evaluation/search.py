"""The oracle: per (prompt, seed) and budget, a step-level schedule over every action, searched with real rollouts.

Starting points are schedules that real methods realised on the same pairs (the segment-error DP, the uniform
schedule, TaylorSeer, the best learned policy: whatever the caller passes). Each is replayed and scored, and each
pair starts from its best one. Then, round after round, every pair proposes a few local moves (shift a FULL,
move it elsewhere, turn two FULLs into a FULL and a CFG step or back, retype a reuse or a run of reuses: STEP,
CFG or BLOCK_k, each plain or forecast) within the budget; all proposals of all pairs run as one batched
generation, and a pair accepts its best proposal only when it raises the final PSNR against the reference.

Why a search on final PSNR rather than a table of per-segment costs: at low budgets the errors of successive
segments do not add up (they compound, and forecasts depend on the last two FULL steps, not one), so any
additive surrogate can rank schedules wrongly; the DP on such a table is beaten by its own students. A move is
kept only when a real rollout says the output got closer, so the result is at least as good, on every pair, as
every schedule it started from. It is a local optimum, so a limit for these starts and these moves, not a proof
of optimality; the rounds are stated with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cachepilot.envs.spec import RunSpec
from cachepilot.models.adapters import num_blocks as count_blocks
from cachepilot.parallel import Shard
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.runtime import CFG, FULL, STEP, Action, Kind

from .harness import ScoredPairs, computed_fractions, generate_logged, score


@dataclass(frozen=True)
class SearchConfig:
    """How long the search runs and which actions it may use."""

    rounds: int = 8
    proposals: int = 6  # candidate moves per pair per round, all run in one batch
    forecast_orders: tuple[int, ...] = (1, 2)
    block_ks: tuple[int, ...] | None = None  # None: one BLOCK_k, k = a third of the blocks
    forecast_basis: str = "step"
    seed: int = 0
    batch: int | None = None  # rollouts per batched generation (None: a round's all at once, split over processes)

    def reuses(self, num_blocks: int, cfg: bool = True) -> tuple[Action, ...]:
        """The reuses the search may place (CFG only where the generation runs an uncond branch)."""
        ks = self.block_ks if self.block_ks is not None else (max(1, num_blocks // 3),)
        plain = (STEP, *((CFG,) if cfg else ()), *(Action.block(k) for k in ks if 1 <= k < num_blocks))
        return (*plain, *(a.forecasting(o) for o in self.forecast_orders for a in plain))


@dataclass
class SearchResult:
    schedules: list[list[Action]]  # per pair, the best schedule found
    psnr: list[float]  # its final PSNR (as measured in the search's rollouts)
    start: list[str]  # per pair, the start it came from
    start_psnr: dict[str, list[float | None]]  # per start, its replayed PSNR per pair (None: over the budget)
    accepted: list[int]  # moves accepted per pair
    rounds: int
    cpu_seconds: float
    wall_seconds: float
    history: list[float] = field(default_factory=list)  # mean PSNR after each round

    def as_dict(self) -> dict:
        return {"schedules": [[str(a) for a in s] for s in self.schedules], "psnr": self.psnr, "start": self.start,
                "start_psnr": self.start_psnr, "accepted": self.accepted, "rounds": self.rounds,
                "cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds, "history": self.history}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchResult":
        data = dict(data)
        data["schedules"] = [[Action.parse(a) for a in s] for s in data["schedules"]]
        return cls(**data)


def schedule_cost(schedule: list[Action], num_blocks: int) -> float:
    """The computed fraction of a step-level schedule."""
    return float(np.mean([a.step_cost(num_blocks) for a in schedule]))


def valid(schedule: list[Action]) -> bool:
    """Whether the runtime can replay it: step 0 computes, a reuse follows a FULL, a forecast of order n follows
    n + 1 FULL steps (the values it extrapolates from are kept at FULL steps of both branches)."""
    fulls = 0
    for action in schedule:
        if action.kind is Kind.FULL:
            fulls += 1
        elif fulls < action.forecast + 1:
            return False
    return True


def forecast_reuses(schedule: list[Action], order: int) -> list[Action]:
    """The same schedule with every plain reuse forecasting at `order` where enough FULL steps came before it."""
    out, fulls = [], 0
    for action in schedule:
        fulls += action.kind is Kind.FULL
        out.append(action.forecasting(order) if action.reuses and not action.forecast and fulls > order else action)
    return out


def realised(summary, samples: int, steps: int) -> list[list[Action]]:
    """The step-level schedule each sample of a generation took, from the runtime's decisions (a step where the
    cond branch computed and the uncond one was rebuilt is CFG)."""
    taken = [[{} for _ in range(steps)] for _ in range(samples)]
    for d in summary.decisions:
        taken[d.sample][d.step][d.branch] = Action.parse(d.action)
    schedules = []
    for rows in taken:
        schedule = []
        for branches in rows:
            cond, uncond = branches.get("cond", FULL), branches.get("uncond")
            if uncond is not None and uncond.kind is Kind.CFG and cond == FULL:
                schedule.append(uncond)
            elif uncond is None or uncond == cond:
                schedule.append(cond)
            else:
                raise ValueError(f"the branches took {cond} and {uncond} at one step: not a step-level schedule")
        schedules.append(schedule)
    return schedules


class Moves:
    """Random local moves on a step-level schedule that keep it valid and within the budget."""

    def __init__(self, budget: float, num_blocks: int, reuses: tuple[Action, ...], rng: np.random.Generator):
        self.budget, self.num_blocks, self.reuses, self.rng = budget, num_blocks, reuses, rng
        self.kinds = (self.shift, self.relocate, self.to_cfg, self.from_cfg, self.retype, self.retype_run, self.add)

    def propose(self, schedule: list[Action], tries: int = 50) -> list[Action] | None:
        for _ in range(tries):
            move = self.kinds[self.rng.integers(len(self.kinds))]
            candidate = move(list(schedule))
            if (candidate is not None and candidate != schedule and valid(candidate)
                    and schedule_cost(candidate, self.num_blocks) <= self.budget + 1e-9):
                return candidate
        return None

    def _pick(self, schedule, where) -> int | None:
        spots = [i for i, a in enumerate(schedule) if i > 0 and where(a)]
        return int(self.rng.choice(spots)) if spots else None

    def _reuse_near(self, schedule, i) -> Action:
        """The reuse a step that stops computing takes: its neighbour's, or STEP."""
        for j in (i - 1, i + 1):
            if 0 <= j < len(schedule) and schedule[j].reuses and schedule[j].kind is not Kind.CFG:
                return schedule[j]
        return STEP

    def shift(self, s):
        i = self._pick(s, lambda a: a == FULL)
        if i is None:
            return None
        j = i + int(self.rng.choice([-2, -1, 1, 2]))
        if not 0 < j < len(s) or s[j] == FULL:
            return None
        s[i], s[j] = s[j], FULL
        return s

    def relocate(self, s):
        i, j = self._pick(s, lambda a: a == FULL), self._pick(s, lambda a: a.reuses and a.kind is not Kind.CFG)
        if i is None or j is None:
            return None
        s[i], s[j] = self._reuse_near(s, i), FULL
        return s

    def to_cfg(self, s):
        """Two half-costs for one FULL: the cond branch of a FULL step keeps computing, and a reused step gets its
        cond branch back."""
        i, j = self._pick(s, lambda a: a == FULL), self._pick(s, lambda a: a.kind in (Kind.STEP, Kind.BLOCK))
        if i is None or j is None or CFG not in self.reuses:
            return None
        s[i] = s[j] = CFG.forecasting(s[j].forecast)
        return s

    def from_cfg(self, s):
        i, j = self._pick(s, lambda a: a.kind is Kind.CFG), self._pick(s, lambda a: a.kind is Kind.CFG)
        if i is None or j is None or i == j:
            return None
        s[i], s[j] = FULL, self._reuse_near(s, j)
        return s

    def retype(self, s):
        i = self._pick(s, lambda a: a.reuses)
        if i is None:
            return None
        s[i] = self.reuses[self.rng.integers(len(self.reuses))]
        return s

    def retype_run(self, s):
        """Every reuse between two FULL steps, to one reuse (the usual shape: one kind of approximation per gap)."""
        i = self._pick(s, lambda a: a.reuses)
        if i is None:
            return None
        lo, hi = i, i
        while lo - 1 > 0 and s[lo - 1].reuses:
            lo -= 1
        while hi + 1 < len(s) and s[hi + 1].reuses:
            hi += 1
        action = self.reuses[self.rng.integers(len(self.reuses))]
        s[lo:hi + 1] = [action] * (hi + 1 - lo)
        return s

    def add(self, s):
        i = self._pick(s, lambda a: a.reuses)
        if i is None:
            return None
        s[i] = FULL
        return s


def replay(pipe, schedules: list[list[Action]], prompts: list[str], seeds: list[int], reference: np.ndarray,
           steps: int, guidance: float, basis: str = "step") -> tuple[np.ndarray, list[list[Action]], list[float], bool]:
    """One batched generation of per-sample schedules: (PSNR per sample, the schedules the runtime realised,
    computed fractions, whether the generation ran an uncond branch)."""
    frames, summary = generate_logged(pipe, FixedSchedule.per_sample(schedules, basis), prompts, seeds, steps, guidance)
    fractions = computed_fractions(summary, len(prompts))
    scores = score(frames, reference, prompts, seeds, fractions, "search", 0.0)
    uncond = any(d.branch == "uncond" for d in summary.decisions)
    return np.array([r.psnr for r in scores]), realised(summary, len(prompts), steps), fractions, uncond


def realise(pipe, policy, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> list[list[Action]]:
    """The step-level schedules `policy` takes on these pairs."""
    _, summary = generate_logged(pipe, policy, prompts, seeds, steps, guidance)
    return realised(summary, len(prompts), steps)


@dataclass
class Rollouts:
    """What the search replays schedules on: a `RunSpec`'s pipeline and its training pairs, scored against their
    uncached frames (by default the spec's reference store's).

    Rollouts run in batched generations of `batch` samples, dealt out over the processes of `shard` and gathered
    back, so every process holds every score. The batches are cut the same way for any number of processes, and a
    sample's output depends on the batch it ran in (in the last bits), so with a `batch` the search is the same on
    one process or many."""

    pipe: object
    pairs: ScoredPairs
    num_blocks: int
    batch: int | None = None  # None: one generation per process
    shard: Shard = Shard()

    @classmethod
    def of(cls, spec: RunSpec, reference: np.ndarray | None = None, pairs=None, batch: int | None = None,
           shard: Shard = Shard()) -> "Rollouts":
        """On `pairs` ((prompt, seed) pairs; None: the spec's training pairs)."""
        pipe, pairs = spec.pipeline(), spec.pair_list() if pairs is None else list(pairs)
        if reference is None:
            reference = spec.reference_store().outputs(pairs)
        scored = ScoredPairs([p for p, _ in pairs], [s for _, s in pairs], spec.steps, spec.guidance, reference)
        return cls(pipe, scored, count_blocks(pipe.transformer), batch, shard)

    def replay(self, schedules: list[list[Action]], owner: list[int] | None = None, basis: str = "step"):
        """`replay` of per-sample schedules, sample i on pair `owner[i]` (default: pair i)."""
        owner = list(range(len(schedules))) if owner is None else owner
        n, p = len(schedules), self.pairs
        size = self.batch or max(1, -(-n // self.shard.world))
        mine = []
        for lo in self.shard.take(range(0, n, size)):
            part = owner[lo:lo + size]
            mine.append((lo, replay(self.pipe, schedules[lo:lo + size], [p.prompts[i] for i in part],
                                    [p.seeds[i] for i in part], p.reference[part], p.steps, p.guidance, basis)))
        parts = self.shard.in_order(mine)
        return (np.concatenate([part[0] for part in parts]), [s for part in parts for s in part[1]],
                [f for part in parts for f in part[2]], any(part[3] for part in parts))


def search(spec: RunSpec, budget: float, config: SearchConfig, starts: dict[str, list[list[Action]]],
           reference: np.ndarray | None = None, log=print, shard: Shard = Shard()) -> SearchResult:
    """The best schedule per training pair of `spec`: from the best of `starts` (name -> one schedule per pair),
    improved by local moves kept only when a real rollout raises the final PSNR (the whole search for all pairs,
    batched). `reference`: the pairs' uncached frames, when the caller has them (else the spec's reference store's).
    Over several processes (`shard`) each runs its share of every round's rollouts; every process returns the
    result, and the first one logs."""
    wall, cpu = time.perf_counter(), time.process_time()
    rollouts = Rollouts.of(spec, reference, batch=config.batch, shard=shard)
    log = shard.first_says(log)
    num_blocks, n = rollouts.num_blocks, len(rollouts.pairs.prompts)
    rng = np.random.default_rng(config.seed)
    best = [None] * n
    best_psnr = np.full(n, -np.inf)
    origin = [""] * n
    start_psnr = {}
    for name, schedules in starts.items():
        fits = np.array([valid(s) and schedule_cost(s, num_blocks) <= budget + 1e-9 for s in schedules])
        psnr_now, taken, _, uncond = rollouts.replay(schedules, basis=config.forecast_basis)
        psnr_now = np.where(fits, psnr_now, -np.inf)
        start_psnr[name] = [float(v) if np.isfinite(v) else None for v in psnr_now]
        for i in np.flatnonzero(psnr_now > best_psnr):
            best[i], best_psnr[i], origin[i] = taken[i], psnr_now[i], name
        log(f"oracle search, budget {budget:g}: start {name}: mean PSNR {np.mean(psnr_now[fits]) if fits.any() else float('nan'):.2f} "
            f"dB on {int(fits.sum())} of {n} pairs within the budget")
    if any(s is None for s in best):
        raise ValueError(f"no start schedule fits budget {budget:g} on every pair")
    moves = Moves(budget, num_blocks, config.reuses(num_blocks, cfg=uncond), rng)
    accepted, history = [0] * n, []
    for r in range(config.rounds):
        batch, owner = [], []
        for i in range(n):
            for _ in range(config.proposals):
                candidate = moves.propose(best[i])
                if candidate is not None:
                    batch.append(candidate)
                    owner.append(i)
        if not batch:
            break
        psnr_now, taken, _, _ = rollouts.replay(batch, owner, config.forecast_basis)
        owner = np.array(owner)
        for i in range(n):
            mine = np.flatnonzero(owner == i)
            if not len(mine):
                continue
            b = mine[np.argmax(psnr_now[mine])]  # the pair's best proposal of this round
            if psnr_now[b] > best_psnr[i]:
                best[i], best_psnr[i] = taken[b], psnr_now[b]
                accepted[i] += 1
        history.append(float(best_psnr.mean()))
        log(f"oracle search, budget {budget:g}: round {r + 1}/{config.rounds}: mean PSNR {history[-1]:.2f} dB")
    return SearchResult(best, [float(v) for v in best_psnr], origin, start_psnr, accepted, config.rounds,
                        time.process_time() - cpu, time.perf_counter() - wall, history)


@dataclass
class SharedSearchResult:
    schedule: list[Action]  # one schedule for every pair
    psnr: list[float]  # its final PSNR per pair
    start: str
    start_psnr: dict[str, float | None]  # per start, its mean PSNR over the pairs (None: over the budget)
    accepted: int
    rounds: int
    cpu_seconds: float
    wall_seconds: float
    history: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"schedule": [str(a) for a in self.schedule], "psnr": self.psnr, "start": self.start,
                "start_psnr": self.start_psnr, "accepted": self.accepted, "rounds": self.rounds,
                "cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds, "history": self.history}

    @classmethod
    def from_dict(cls, data: dict) -> "SharedSearchResult":
        data = dict(data)
        data["schedule"] = [Action.parse(a) for a in data["schedule"]]
        return cls(**data)


def search_shared(spec: RunSpec, budget: float, config: SearchConfig, starts: dict[str, list[Action]],
                  reference: np.ndarray | None = None, log=print, pairs=None,
                  shard: Shard = Shard()) -> SharedSearchResult:
    """The one schedule with the best mean final PSNR over all the pairs (`pairs`, else the spec's training pairs):
    what a policy that cannot tell the pairs apart could at best do, and what it can learn from. Same moves as
    `search`; a round's candidates each run on every pair (one batched generation) and the best is kept only when it
    raises the mean. With no rounds, the best of the starts. Over several processes as `search`."""
    wall, cpu = time.perf_counter(), time.process_time()
    rollouts = Rollouts.of(spec, reference, pairs, config.batch, shard)
    log = shard.first_says(log)
    num_blocks, n = rollouts.num_blocks, len(rollouts.pairs.prompts)

    def mean_psnr(candidates: list[list[Action]]) -> tuple[np.ndarray, np.ndarray, bool]:
        batch = [c for c in candidates for _ in range(n)]
        psnr_now, _, _, uncond = rollouts.replay(batch, list(range(n)) * len(candidates), config.forecast_basis)
        per_pair = psnr_now.reshape(len(candidates), n)
        return per_pair.mean(1), per_pair, uncond

    fitting = {name: s for name, s in starts.items() if valid(s) and schedule_cost(s, num_blocks) <= budget + 1e-9}
    if not fitting:
        raise ValueError(f"no start schedule fits budget {budget:g}")
    means, per_pair, uncond = mean_psnr(list(fitting.values()))
    start_psnr = {name: None for name in starts} | {name: float(m) for name, m in zip(fitting, means)}
    k = int(means.argmax())
    origin, best, best_mean, best_pairs = list(fitting)[k], list(fitting.values())[k], means[k], per_pair[k]
    log(f"shared schedule search, budget {budget:g}: best start {origin}, mean PSNR {best_mean:.2f} dB on {n} pairs")
    moves = Moves(budget, num_blocks, config.reuses(num_blocks, cfg=uncond), np.random.default_rng(config.seed))
    accepted, history = 0, []
    for r in range(config.rounds):
        candidates = []
        for _ in range(config.proposals):
            candidate = moves.propose(best)
            if candidate is not None and candidate not in candidates:
                candidates.append(candidate)
        if not candidates:
            break
        means, per_pair, _ = mean_psnr(candidates)
        k = int(means.argmax())
        if means[k] > best_mean:
            best, best_mean, best_pairs = candidates[k], means[k], per_pair[k]
            accepted += 1
        history.append(float(best_mean))
        log(f"shared schedule search, budget {budget:g}: round {r + 1}/{config.rounds}: mean PSNR {best_mean:.2f} dB")
    return SharedSearchResult(best, [float(v) for v in best_pairs], origin, start_psnr, accepted, config.rounds,
                              time.process_time() - cpu, time.perf_counter() - wall, history)
