"""What CacheEnv and BatchedCacheEnv share: the (prompt, seed) pairs, action set, spaces, references, rewards."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gymnasium import spaces

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.metrics import QUALITY_METRICS, lpips_model, quality
from cachepilot.models.adapters import num_blocks as count_blocks
from cachepilot.policies.learned import within_budget
from cachepilot.policies.observation import CLIP, ObservationSpec
from cachepilot.runtime import Action, step_actions

from .lockstep import Lockstep, Pause
from .reward import RewardConfig, trajectory_distance
from .spec import RunSpec, Setting


@dataclass(frozen=True)
class Episode:
    pair: int  # index into the environment's pair list
    prompt: str
    seed: int
    budget: float  # target fraction of full compute
    steps: int | None = None  # the setting it runs at (None: the spec's primary one)
    guidance: float | None = None

    def setting(self, primary: Setting) -> Setting:
        return Setting(self.steps or primary.steps, primary.guidance if self.guidance is None else self.guidance)


def default_block_ks(num_blocks: int) -> tuple[int, ...]:
    """BLOCK_k at a third and two thirds of the stack (toy-wan, 6 blocks: BLOCK_2, BLOCK_4)."""
    return tuple(sorted({k for k in (num_blocks // 3, 2 * num_blocks // 3) if 1 <= k < num_blocks}))


DEFAULT_FORECASTS = (1, 2)  # every reuse may also forecast, with order 1 or 2


@dataclass(frozen=True)
class EpisodeConfig:
    """How episodes are run and scored (what they run on is the `RunSpec`)."""

    quality: str = "psnr"  # the final-quality metric of the reward: psnr, ssim or lpips
    block_ks: tuple[int, ...] | None = None  # the BLOCK_k actions; None: `default_block_ks`
    forecasts: tuple[int, ...] = DEFAULT_FORECASTS  # the forecast orders every reuse may also take
    reward: RewardConfig = field(default_factory=RewardConfig)
    budget_guard: bool = False  # also mask what would overrun the episode's budget (as a LearnedPolicy does)
    extra_signals: tuple[str, ...] = ()  # optional signals added to the pipeline's observation
    observation: ObservationSpec | None = None  # the observation itself (a warm start's); None: the default's

    def __post_init__(self):
        if self.quality not in QUALITY_METRICS:
            raise InvalidInputError(f"unknown quality metric {self.quality!r}; choose from {', '.join(QUALITY_METRICS)}")
        object.__setattr__(self, "forecasts", tuple(checks.count("forecast order", o) for o in self.forecasts))
        object.__setattr__(self, "extra_signals", tuple(self.extra_signals))


class CacheEpisodes:
    """Episodes over a `RunSpec`'s training pairs, budgets drawn from its budgets' range and settings from its
    settings, run as `config` says. The episodes of one batch share a setting; `steps`, `guidance` and `store` are
    the current batch's (the primary setting's before the first)."""

    def __init__(self, spec: RunSpec | None = None, config: EpisodeConfig | None = None):
        self.run, self.config = spec or RunSpec(), config or EpisodeConfig()
        self.pairs = self.run.pair_list()
        self.budget_range = self.run.budget_range
        if self.config.quality == "lpips":
            lpips_model()  # fail now, with the message saying where the weights go, not at the first episode end
        self.source, self.pipe = self.run.model, self.run.pipeline()
        self.model, self.quality = self.source.name, self.config.quality
        self.settings = self.run.setting_list()
        self.setting = self.run.primary
        self.steps, self.guidance = self.setting.steps, self.setting.guidance
        self.reward = self.config.reward
        self.num_blocks = num_blocks = count_blocks(self.pipe.transformer)
        self.budget_guard = self.config.budget_guard
        block_ks = self.config.block_ks
        self.actions: tuple[Action, ...] = step_actions(
            num_blocks, default_block_ks(num_blocks) if block_ks is None else block_ks, self.config.forecasts)
        try:
            self.observation_spec = self.config.observation or ObservationSpec.for_pipeline(self.pipe,
                                                                                              self.config.extra_signals)
        except ValueError as err:
            raise InvalidInputError(str(err)) from None
        self.observation_space = spaces.Box(-CLIP, CLIP, (self.observation_spec.size,), np.float32)
        self.action_space = spaces.Discrete(len(self.actions))
        self.store = self.run.reference_store()
        self._stores = {self.setting: self.store}
        self.lockstep = Lockstep(self.pipe, self.actions, self.observation_spec, self.steps, self.guidance)
        self._refs: dict = {}
        self.episodes: list[Episode] = []
        self.masks: list[np.ndarray] = []

    # ---- episodes ---------------------------------------------------------------------------
    def draw_setting(self, rng: np.random.Generator, options: dict | None = None) -> Setting:
        """A setting of the spec's, from `rng` unless `options` fixes it ("steps", "guidance"); with one setting,
        that one (and `rng` is left as it was)."""
        options = options or {}
        if "steps" in options or "guidance" in options:
            return Setting(options.get("steps", self.run.steps), options.get("guidance", self.run.guidance))
        return self.settings[int(rng.integers(len(self.settings)))] if len(self.settings) > 1 else self.settings[0]

    def draw(self, rng: np.random.Generator, options: dict | None = None) -> Episode:
        """A (prompt, seed) pair, a budget and a setting, from `rng` unless `options` fixes them ("pair", "budget",
        "steps", "guidance")."""
        options = options or {}
        setting = self.draw_setting(rng, options)
        if "pair" in options:
            pair = checks.count("pair", options["pair"], low=0, high=len(self.pairs) - 1)
        else:
            pair = int(rng.integers(len(self.pairs)))
        lo, hi = self.budget_range
        budget = checks.budget(options["budget"]) if "budget" in options else float(rng.uniform(lo, hi))
        prompt, seed = self.pairs[pair]
        if setting == self.run.primary:
            return Episode(pair, prompt, seed, budget)
        return Episode(pair, prompt, seed, budget, setting.steps, setting.guidance)

    def store_at(self, setting: Setting):
        """The reference store of a setting (one root, keyed by steps and guidance)."""
        if setting not in self._stores:
            self._stores[setting] = self.run.at(setting).reference_store()
        return self._stores[setting]

    def _enter(self, setting: Setting) -> None:
        """Make `setting` the current batch's."""
        self.setting, self.steps, self.guidance = setting, setting.steps, setting.guidance
        self.store = self.store_at(setting)
        self.lockstep.steps, self.lockstep.guidance = setting.steps, setting.guidance

    def references(self, episodes: list[Episode]) -> list:
        """The episodes' references (at the current setting)."""
        keys = [(e.prompt, e.seed, self.setting) for e in episodes]
        wanted = list(dict.fromkeys(k for k in keys if k not in self._refs))
        if wanted:
            trajectory = self.reward.shaping_weight > 0
            found = self.store.get_many([(p, s) for p, s, _ in wanted], trajectory=trajectory, progress=False)
            self._refs.update(zip(wanted, found))
        return [self._refs[k] for k in keys]

    def begin(self, episodes: list[Episode]) -> tuple[np.ndarray, list[dict]]:
        self.lockstep.abort()  # the hooks come off before references are built
        settings = {e.setting(self.run.primary) for e in episodes}
        if len(settings) != 1:
            raise InvalidInputError(f"the episodes of one batch share a setting; got {', '.join(map(str, sorted(settings)))}")
        self._enter(settings.pop())
        self.references(episodes)
        self.episodes = list(episodes)
        self._costs = [[] for _ in episodes]
        pause = self.lockstep.start([e.prompt for e in episodes], [e.seed for e in episodes])
        obs = self._observe(pause)
        return obs, [{"prompt": e.prompt, "seed": e.seed, "budget": e.budget, "pair": e.pair, "steps": self.steps,
                      "guidance": self.guidance} for e in episodes]

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
        return np.zeros((len(picks), self.observation_spec.size), np.float32), rewards, True, infos

    def _observe(self, pause: Pause) -> np.ndarray:
        order = sorted(range(len(pause.signals)), key=lambda r: pause.signals[r].sample)
        if [pause.signals[r].sample for r in order] != list(range(len(self.episodes))):
            raise RuntimeError("the cond branch did not decide for every episode of the batch")
        self.masks = [np.asarray(pause.masks[r], dtype=bool) for r in order]
        if self.budget_guard:  # also mask what would overrun the budget (what a LearnedPolicy does at inference)
            step = len(self._costs[0])
            self.masks = [within_budget(mask, self.actions, self.num_blocks, step, sum(costs), episode.budget, self.steps)
                          for mask, costs, episode in zip(self.masks, self._costs, self.episodes)]
        return np.stack([self.observation_spec.build(pause.signals[r], e.budget) for r, e in zip(order, self.episodes)])

    def _terminal_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.actions), dtype=bool)
        mask[0] = True
        return mask

    def close(self) -> None:
        self.lockstep.abort()
