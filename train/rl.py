"""Reinforcement learning: MaskablePPO (sb3-contrib) on batched environments, budget drawn per episode.

The actor is SB3's MLP with tanh, the same layout as `PolicyNet`, so a distilled policy warm-starts it
and the trained actor exports to an ordinary policy file. The environment masks invalid actions and,
with `budget_guard`, those that would overrun the episode's budget (as the policy does at inference).
Episode PSNR, computed fraction, reward and the action histogram go to TensorBoard; the validation score
(through the real inference path, on a second pipeline) is logged every `eval_every` rollouts.

After every update the run keeps a checkpoint (`cachepilot.state_file`: safetensors and sealed JSON, no pickle, so
nothing in a run folder can run code): the actor-critic and its optimiser, every random state, and the episodes
the environment has begun, with the settings of the run. A rerun with the same settings resumes from it exactly
where the update left off, so an interrupted run ends with the weights an uninterrupted one would have; a rerun
with other settings is refused. A damaged checkpoint is set aside, reported in one line, and training starts over.
SB3's own `save` / `load` (a zip of pickled objects) is not used.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from cachepilot import checks
from cachepilot.envs import CacheEpisodes, EpisodeConfig, RunSpec, ShardedCacheEnv
from cachepilot.errors import InvalidInputError
from cachepilot.evaluation.validation import evaluate_student
from cachepilot.io import read_or_set_aside
from cachepilot.parallel import Shard
from cachepilot.policies.learned import PolicyNet
from cachepilot.policies.policy_file import PolicyBundle, load_policy
from cachepilot.state_file import read_state, remove_state, write_state

from .trainer import Trainer, feasible_budgets, validated_policy

CHECKPOINT = "ppo_resume.json"  # and its tensors beside it, ppo_resume.json.<digest>.safetensors


@dataclass
class PPOConfig:
    """How the policy is trained by PPO (what it is trained on is the `RunSpec`; episodes draw their budget from the
    range of its budgets)."""

    total_timesteps: int = 12_000  # env steps over all envs (one episode = `steps` env steps)
    num_envs: int = 8
    lr: float = 3e-4
    n_epochs: int = 5
    batch_size: int = 100
    ent_coef: float = 0.01
    gamma: float = 1.0  # episodic, fixed length: no discount
    hidden: tuple[int, ...] = (64, 64)
    eval_every: int = 5  # rollouts between validation scores
    eval_budgets: tuple[float, ...] = (0.15, 0.25, 0.35, 0.5)
    init_from: str | None = None  # a policy file (e.g. the distilled one) to start the actor from
    seed: int = 0
    env_group: int | None = None  # environments per batched generation (None: all, split over processes)

    def __post_init__(self):
        for name in ("total_timesteps", "num_envs", "n_epochs", "batch_size"):
            setattr(self, name, checks.count(name, getattr(self, name)))
        self.eval_every = checks.count("eval_every", self.eval_every, low=0)
        self.lr, self.seed = checks.positive("lr", self.lr), checks.seed(self.seed)
        self.ent_coef = float(checks.number("ent_coef", self.ent_coef, low=0.0))
        self.gamma = float(checks.number("gamma", self.gamma, low=0.0, high=1.0))
        self.eval_budgets = tuple(checks.budget(b) for b in self.eval_budgets)
        self.hidden = tuple(checks.count("hidden width", h) for h in self.hidden)
        if self.env_group is not None:
            self.env_group = checks.count("env_group", self.env_group)


def actor_to_net(model, hidden) -> PolicyNet:
    policy = model.policy
    net = PolicyNet(policy.observation_space.shape[0], policy.action_space.n, hidden)
    net.body.load_state_dict(policy.mlp_extractor.policy_net.state_dict())
    net.head.load_state_dict(policy.action_net.state_dict())
    return net.eval()


def net_to_actor(net: PolicyNet, model) -> None:
    model.policy.mlp_extractor.policy_net.load_state_dict(net.body.state_dict())
    model.policy.action_net.load_state_dict(net.head.state_dict())


def run_settings(config: PPOConfig, env: ShardedCacheEnv, warm_start) -> dict:
    """Everything that changes what a run trains, as stored with its checkpoint: a rerun resumes only a run made
    with the same (its length, `total_timesteps`, may grow)."""
    episodes = env.episodes
    return json.loads(json.dumps({
        "model": episodes.store.model_hash, "steps": episodes.run.steps, "guidance": episodes.run.guidance,
        **({"settings": [[s.steps, s.guidance] for s in episodes.settings]} if len(episodes.settings) > 1 else {}),
        "pairs": episodes.pairs, "budgets": episodes.budget_range, "num_envs": env.num_envs,
        **({"env_groups": env.sizes} if len(env.sizes) > 1 else {}), "lr": config.lr,
        "n_epochs": config.n_epochs, "batch_size": config.batch_size, "ent_coef": config.ent_coef,
        "gamma": config.gamma, "hidden": config.hidden, "seed": config.seed,
        "init_from": warm_start.weights_sha256 if warm_start is not None else None,
        "actions": [str(a) for a in env.actions], "observation": list(env.observation_spec.names)}))


# the command-line flag that sets each setting, for the message that refuses a rerun with another one
SETTING_FLAGS = {"model": "--model / --model-path", "steps": "--steps", "guidance": "--guidance", "settings": "--steps / --guidance",
                 "pairs": "--pairs / --prompts-file", "budgets": "--budgets", "num_envs": "--num-envs",
                 "seed": "--seed", "init_from": "--init-from", "env_groups": "--env-group / --devices"}


def save_checkpoint(path: Path, agent, env: ShardedCacheEnv, settings: dict) -> None:
    """Everything a resume needs to go on exactly, taken between an update and the next rollout: the actor-critic
    and its optimiser, the counters, every random state and the episodes the environments have begun. Every process
    calls it (the environments' snapshot gathers every group's); the first one writes."""
    snapshot = env.snapshot()
    if env.shard.rank != 0:
        return
    state = {"policy": agent.policy.state_dict(), "optimizer": agent.policy.optimizer.state_dict(),
             "num_timesteps": agent.num_timesteps, "n_updates": agent._n_updates, "episode_num": agent._episode_num,
             "random": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "env": snapshot}
    write_state(path, state, {"settings": settings, "timesteps": int(agent.num_timesteps)})


def _shown(value) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) else \
        f"{value:g}" if isinstance(value, float) else str(value)


def _check_same_run(path: Path, meta: dict, settings: dict, config: PPOConfig) -> None:
    """Refuse to resume a run made with other settings, or already longer than asked."""
    stored = meta.get("settings", {})
    for name, value in settings.items():
        if stored.get(name) != value:
            flag = SETTING_FLAGS.get(name, name)
            shown = f"other {flag}" if name in ("pairs", "model", "actions", "observation") else \
                f"{flag} {_shown(stored.get(name))}, not {_shown(value)}"
            raise InvalidInputError(f"{path.parent} holds a PPO run made with {shown}; rerun with its settings to "
                                    "resume it, or pass --fresh to start over")
    if meta.get("timesteps", 0) > config.total_timesteps:
        raise InvalidInputError(f"{path.parent} holds a PPO run already trained for {meta['timesteps']} steps, more "
                                f"than --timesteps {config.total_timesteps}; ask for at least that many, or pass "
                                "--fresh to start over")


def resume(path: Path, build_agent, env: ShardedCacheEnv, settings: dict, config: PPOConfig, log):
    """The agent of a checkpoint (built by `build_agent` as a fresh run builds it, then loaded), with the random
    states and the environments' episodes restored; None without one, or when it is damaged (then it is set aside
    and training starts over). Refused when it was made with other settings."""

    def load(p: Path):
        state, meta = read_state(p)
        _check_same_run(p, meta, settings, config)
        agent = build_agent()
        agent.policy.load_state_dict(state["policy"])
        agent.policy.optimizer.load_state_dict(state["optimizer"])
        agent._last_obs = env.restore(state["env"])  # building the agent seeded the environments: put them back
        return state, agent

    found = read_or_set_aside(path, load, log)
    if found is None:
        return None
    state, agent = found
    agent.num_timesteps, agent._n_updates = int(state["num_timesteps"]), int(state["n_updates"])
    agent._episode_num = int(state["episode_num"])
    agent._last_episode_starts = np.ones(env.num_envs, dtype=bool)
    random.setstate(state["random"]["python"])
    np.random.set_state(state["random"]["numpy"])
    torch.set_rng_state(state["random"]["torch"])
    log(f"resuming PPO from {path} at {agent.num_timesteps} steps")
    return agent


@contextmanager
def kept_random_state():
    """Python's, numpy's and torch's random state as they were before the block, after it."""
    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(python)
    np.random.set_state(numpy_state)


def _callback(checkpoint: Path, settings: dict, val, eval_budgets, config: PPOConfig, env, log):
    class Monitor(BaseCallback):
        """Episode metrics and action histogram to TensorBoard; validation per rollout; the checkpoint after each
        update (at the start of the next rollout)."""

        def __init__(self):
            super().__init__()
            self.picks, self.finals, self.saved_at = Counter(), [], None

        @property
        def rollouts(self) -> int:
            return self.num_timesteps // (self.model.n_steps * self.model.n_envs)

        def _on_rollout_start(self) -> None:
            if self.num_timesteps and self.saved_at is not None and self.num_timesteps != self.saved_at:
                save_checkpoint(checkpoint, self.model, env, settings)
            self.saved_at = self.num_timesteps

        def _on_step(self) -> bool:
            self.picks.update(int(a) for a in np.asarray(self.locals["actions"]).reshape(-1))
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and "psnr" in info:
                    self.finals.append(info)
            return True

        def _on_rollout_end(self) -> None:
            if self.finals:
                for key in ("psnr", "computed_fraction", "reward_quality", "reward_budget"):
                    self.logger.record(f"episode/{key}", float(np.mean([f[key] for f in self.finals])))
                log(f"rollout {self.rollouts} ({self.num_timesteps} steps): PSNR "
                    f"{np.mean([f['psnr'] for f in self.finals]):.2f} dB at "
                    f"{np.mean([f['computed_fraction'] for f in self.finals]):.3f} compute")
            total = sum(self.picks.values()) or 1
            for index, action in enumerate(env.actions):
                self.logger.record(f"actions/{action}", self.picks[index] / total)
            self.picks, self.finals = Counter(), []
            if val is not None and config.eval_every and self.rollouts % config.eval_every == 0:
                with kept_random_state():  # validation leaves training as it would be without it
                    scores = evaluate_student(val, actor_to_net(self.model, config.hidden), eval_budgets)
                for budget, score in scores.items():
                    self.logger.record(f"val/psnr@{budget}", score["psnr"])
                    self.logger.record(f"val/computed_fraction@{budget}", score["computed_fraction"])

    return Monitor()


class PPOTrainer(Trainer):
    """MaskablePPO over a `RunSpec`, as stable-baselines3's algorithms are used:
    `PPOTrainer(spec, PPOConfig(), run_dir).learn()` returns the policy, `.save(out)` writes its policy file. A run
    resumes from the checkpoint in its run folder when it was made with the same settings, and is refused when it
    was not, unless `learn(fresh=True)`: then that checkpoint is deleted and training starts over."""

    def __init__(self, spec: RunSpec, config: PPOConfig | None = None, run_dir="runs/ppo.run", log=print,
                 shard: Shard = Shard()):
        super().__init__(spec, config or PPOConfig(), run_dir, shard.first_says(log))
        self.shard = shard
        self.eval_budgets = feasible_budgets(spec.budget_range, self.config.eval_budgets, spec.steps_range[0], self.log)
        self.warm_start = load_policy(self.config.init_from) if self.config.init_from else None

    def learn(self, fresh: bool = False) -> PolicyBundle | None:
        """Train (resuming the run folder's checkpoint); the policy, on the first of the run's processes (None on
        the others, which collect their groups' rollouts and make the same updates)."""
        config, spec, log, first = self.config, self.spec, self.log, self.shard.rank == 0
        started = time.perf_counter()
        # a warm-started actor observes what the policy it starts from observes
        observation = self.warm_start.card.observation if self.warm_start is not None else None
        env = ShardedCacheEnv(spec, EpisodeConfig(budget_guard=True, observation=observation), config.num_envs,
                              config.env_group, self.shard)
        self._check_warm_start(env)
        env.seed(config.seed)
        # validation runs on its own pipeline, references included (the same store folder, another store object): the
        # training env keeps its pipeline hooked between rollouts
        val = CacheEpisodes(spec.at(spec.primary).validation(env.episodes.source.load(), env.episodes.store.root)) \
            if first else None
        checkpoint, settings = self.run_dir / CHECKPOINT, run_settings(config, env, self.warm_start)
        if fresh and first:
            remove_state(checkpoint)
        self.shard.wait()  # a fresh run's checkpoint is gone before any process reads it
        agent = resume(checkpoint, lambda: self._agent(env), env, settings, config, log)
        if agent is None:
            agent = self._agent(env)
            if self.warm_start is not None:
                net_to_actor(self.warm_start.net, agent)
                log(f"actor warm-started from {config.init_from}")
        remaining = config.total_timesteps - agent.num_timesteps
        if remaining > 0:
            agent.learn(remaining, callback=_callback(checkpoint, settings, val, self.eval_budgets, config, env, log),
                        reset_num_timesteps=False, tb_log_name="ppo")
            save_checkpoint(checkpoint, agent, env, settings)  # the last update too: a rerun exports it untrained
        else:
            log(f"{checkpoint} holds a finished run of {agent.num_timesteps} steps; exporting it without training")
        env.close()
        if not first:
            return None
        training = self.training_record(
            "ppo", started, library="sb3-contrib MaskablePPO", timesteps=int(agent.num_timesteps),
            episodes=int(agent.num_timesteps // spec.steps),
            **({"init_weights_sha256": self.warm_start.weights_sha256} if self.warm_start else {}))
        self.policy, self.table = validated_policy(actor_to_net(agent, config.hidden), env.episodes, val, training,
                                                   self.eval_budgets, log=log,
                                                   trained=(spec.steps_range, spec.guidance_range))
        return self.policy

    def _check_warm_start(self, env: ShardedCacheEnv) -> None:
        warm = self.warm_start
        if warm is None:
            return
        warm.check_pipeline(env.episodes.pipe, self.spec.steps)
        if warm.card.actions != env.actions or warm.net.hidden != tuple(self.config.hidden):
            raise InvalidInputError(f"{self.config.init_from} has another action set or network shape "
                                    f"({', '.join(map(str, warm.card.actions))}; {list(warm.net.hidden)}); "
                                    "cannot warm-start from it")

    def _agent(self, env: ShardedCacheEnv) -> MaskablePPO:
        config = self.config
        return MaskablePPO(
            MaskableActorCriticPolicy, env, learning_rate=config.lr, n_steps=self.spec.steps,
            batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=config.gamma, ent_coef=config.ent_coef,
            seed=config.seed, verbose=0,
            policy_kwargs={"net_arch": {"pi": list(config.hidden), "vf": list(config.hidden)}, "activation_fn": nn.Tanh},
            tensorboard_log=str(self.run_dir / "tensorboard") if self.shard.rank == 0 else None)
