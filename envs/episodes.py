"""What CacheEnv and BatchedCacheEnv share: the (prompt, seed) pairs, action set, spaces, references, rewards."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.metrics import QUALITY_METRICS, lpips_model, quality
from cachepilot.models.adapters import num_blocks as count_blocks
from cachepilot.models.registry import ModelSource
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.learned import within_budget
from cachepilot.policies.observation import CLIP, ObservationSpec
from cachepilot.runtime import Action, step_actions

from .lockstep import Lockstep, Pause
from .references import ReferenceStore
from .reward import RewardConfig, trajectory_distance


@dataclass(frozen=True)
class Episode:
    pair: int  # index into the environment's pair list
    prompt: str
    seed: int
    budget: float  # target fraction of full compute


def default_block_ks(num_blocks: int) -> tuple[int, ...]:
    """BLOCK_k at a third and two thirds of the stack (toy-wan, 6 blocks: BLOCK_2, BLOCK_4)."""
    return tuple(sorted({k for k in (num_blocks // 3, 2 * num_blocks // 3) if 1 <= k < num_blocks}))


DEFAULT_FORECASTS = (1, 2)  # every reuse may also forecast, with order 1 or 2


def make_pairs(model, prompts, pairs: int | None) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: prompt i of the list (a toy-wan split name or explicit prompts) with seed i."""
    model = ModelSource.of(model).name
    if isinstance(prompts, str):
        if model != "toy-wan":
            raise InvalidInputError(f"prompt split {prompts!r} exists for toy-wan only; pass a list of prompts for "
                                    f"{model!r}")
        prompts = load_split(prompts)
    prompts = [checks.prompt(p) for p in prompts]
    if not prompts:
        raise InvalidInputError("no prompts given")
    count = len(prompts) if pairs is None else checks.count("pairs", pairs, high=len(prompts))
    return [(prompts[i], i) for i in range(count)]


def _budget_range(budget) -> tuple[float, float]:
    if isinstance(budget, numbers.Real):
        lo, hi = budget, budget
    elif isinstance(budget, (tuple, list)) and len(budget) == 2:
        lo, hi = budget
    else:
        raise InvalidInputError(f"budget must be a fraction of full compute or a (low, high) range, got {budget!r}")
    lo, hi = checks.budget(lo, "budget range start"), checks.budget(hi, "budget range end")
    if lo > hi:
        raise InvalidInputError(f"budget range [{lo}, {hi}] is empty")
    return lo, hi


class CacheEpisodes:
    def __init__(self, model: str = "toy-wan", prompts="train", pairs: int | None = 64, steps: int = 50,
                 guidance: float = 5.0, budget=(0.2, 0.6), quality: str = "psnr", block_ks=None,
                 forecasts: tuple[int, ...] = DEFAULT_FORECASTS, reward: RewardConfig | None = None, model_path=None,
                 pipe=None, references=None, budget_guard: bool = False, extra_signals: tuple[str, ...] = ()):
        if quality not in QUALITY_METRICS:
            raise InvalidInputError(f"unknown quality metric {quality!r}; choose from {', '.join(QUALITY_METRICS)}")
        self.pairs = make_pairs(model, prompts, pairs)
        self.budget_range = _budget_range(budget)
        if quality == "lpips":
            lpips_model()  # fail now, with the message saying where the weights go, not at the first episode end
        self.source = ModelSource.of(model, model_path)
        if pipe is None:
            pipe = self.source.load()
        self.pipe, self.model, self.quality = pipe, self.source.name, quality
        self.steps, self.guidance = checks.count("steps", steps), checks.guidance(guidance)
        self.reward = reward or RewardConfig()
        self.num_blocks = num_blocks = count_blocks(pipe.transformer)
        self.budget_guard = budget_guard
        self.actions: tuple[Action, ...] = step_actions(
            num_blocks, default_block_ks(num_blocks) if block_ks is None else block_ks,
            tuple(checks.count("forecast order", o) for o in forecasts))
        try:
            self.spec = ObservationSpec.for_pipeline(pipe, tuple(extra_signals))
        except ValueError as err:
            raise InvalidInputError(str(err)) from None
        self.observation_space = spaces.Box(-CLIP, CLIP, (self.spec.size,), np.float32)
        self.action_space = spaces.Discrete(len(self.actions))
        self.store = references if isinstance(references, ReferenceStore) else ReferenceStore(
            pipe, model, self.steps, self.guidance, root=references)
        self.lockstep = Lockstep(pipe, self.actions, self.spec, self.steps, self.guidance)
        self._refs: dict = {}
        self.episodes: list[Episode] = []
        self.masks: list[np.ndarray] = []

    # ---- episodes ---------------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, options: dict | None = None) -> Episode:
        """A (prompt, seed) pair and a budget, from `rng` unless `options` fixes them ("pair", "budget")."""
        options = options or {}
        if "pair" in options:
            pair = checks.count("pair", options["pair"], low=0, high=len(self.pairs) - 1)
        else:
            pair = int(rng.integers(len(self.pairs)))
        lo, hi = self.budget_range
        budget = checks.budget(options["budget"]) if "budget" in options else float(rng.uniform(lo, hi))
        prompt, seed = self.pairs[pair]
        return Episode(pair, prompt, seed, budget)

    def references(self, episodes: list[Episode]) -> list:
        wanted = [(e.prompt, e.seed) for e in episodes if (e.prompt, e.seed) not in self._refs]
        if wanted:
            trajectory = self.reward.shaping_weight > 0
            for pair, ref in zip(wanted, self.store.get_many(wanted, trajectory=trajectory, progress=False)):
                self._refs[pair] = ref
        return [self._refs[(e.prompt, e.seed)] for e in episodes]

    def begin(self, episodes: list[Episode]) -> tuple[np.ndarray, list[dict]]:
        self.lockstep.abort()  # the hooks come off before references are built
        self.references(episodes)
        self.episodes = list(episodes)
        self._costs = [[] for _ in episodes]
        pause = self.lockstep.start([e.prompt for e in episodes], [e.seed for e in episodes])
        obs = self._observe(pause)
        return obs, [{"prompt": e.prompt, "seed": e.seed, "budget": e.budget, "pair": e.pair} for e in episodes]

    def advance(self, picks) -> tuple[np.ndarray, np.ndarray, bool, list[dict]]:
        picks = [checks.count("action", p, low=0, high=len(self.actions) - 1) for p in np.asarray(picks).reshape(-1)]
        if len(picks) != len(self.episodes):
            raise InvalidInputError(f"expected {len(self.episodes)} actions, got {len(picks)}")
        infos = []
        for i, pick in enumerate(picks):
            invalid = not self.masks[i][pick]
            if invalid:  # e.g. reuse before anything was computed: compute instead, and say so
                picks[i] = 0
            infos.append({"action": str(self.actions[picks[i]]), "invalid_action": invalid})
        step = len(self._costs[0])
        pause = self.lockstep.step(picks)
        rewards = np.zeros(len(picks))
        refs = self.references(self.episodes)
        for i, (episode, info) in enumerate(zip(self.episodes, infos)):
            cost = float(pause.step_costs[i])
            self._costs[i].append(cost)
            distance = None
            if self.reward.shaping_weight and pause.latents is not None and refs[i].trajectory is not None:
                distance = trajectory_distance(pause.latents[i].cpu(), refs[i].trajectory[step])
            terms = self.reward.step(cost, self.steps, distance)
            info.update(terms, step=step, step_cost=cost, budget=episode.budget,
                        computed_fraction=sum(self._costs[i]) / self.steps)
            if distance is not None:
                info["trajectory_distance"] = distance
            rewards[i] = sum(terms.values())
        if not pause.done:
            return self._observe(pause), rewards, False, infos
        for i, (episode, info, ref) in enumerate(zip(self.episodes, infos, refs)):
            score = quality(self.quality, pause.frames[i], ref.output.numpy())
            terms = self.reward.final(score, info["computed_fraction"], episode.budget)
            rewards[i] += terms["reward_quality"] + terms["reward_budget"]
            info.update(terms, quality_loss=float(score.loss), prompt=episode.prompt, seed=episode.seed)
            info[self.quality] = float(score.value)
        self.masks = [self._terminal_mask() for _ in self.episodes]
        return np.zeros((len(picks), self.spec.size), np.float32), rewards, True, infos

    def _observe(self, pause: Pause) -> np.ndarray:
        order = sorted(range(len(pause.signals)), key=lambda r: pause.signals[r].sample)
        if [pause.signals[r].sample for r in order] != list(range(len(self.episodes))):
            raise RuntimeError("the cond branch did not decide for every episode of the batch")
        self.masks = [np.asarray(pause.masks[r], dtype=bool) for r in order]
        if self.budget_guard:  # also mask what would overrun the budget (what a LearnedPolicy does at inference)
            step = len(self._costs[0])
            self.masks = [within_budget(mask, self.actions, self.num_blocks, step, sum(costs), episode.budget, self.steps)
                          for mask, costs, episode in zip(self.masks, self._costs, self.episodes)]
        return np.stack([self.spec.build(pause.signals[r], e.budget) for r, e in zip(order, self.episodes)])

    def _terminal_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.actions), dtype=bool)
        mask[0] = True
        return mask

    def close(self) -> None:
        self.lockstep.abort()
