"""The cache environments on toy-wan: API compliance, rewards, masks, batched == single."""

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from cachepilot.envs import BatchedCacheEnv, CacheEnv, EpisodeConfig, RewardConfig, RunSpec
from cachepilot.metrics import LPIPSUnavailable

STEPS = 6


@pytest.fixture
def make_env(toy_pipe, tmp_path):
    envs = []

    def make(cls=CacheEnv, *args, budget=(0.2, 0.6), **kwargs):
        spec = RunSpec(pairs=3, steps=STEPS, budgets=budget, references=tmp_path / "refs", pipe=toy_pipe)
        env = cls(spec, EpisodeConfig(**kwargs), *args)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def run(env, picks, options=None, seed=0):
    obs, info = env.reset(seed=seed, options=options)
    total, infos = 0.0, []
    for pick in picks:
        obs, reward, terminated, truncated, info = env.step(pick)
        total += reward
        infos.append(info)
    assert terminated and not truncated
    return total, infos


@pytest.mark.slow
def test_gymnasium_and_sb3_check_env(make_env):
    env = make_env()
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)


@pytest.mark.slow
def test_full_only_episode_is_lossless_and_costs_everything(make_env):
    env = make_env(budget=(0.2, 0.6))
    total, infos = run(env, [0] * STEPS, options={"budget": 0.4})
    last = infos[-1]
    assert last["quality_loss"] == 0.0 and last["psnr"] > 50
    assert last["computed_fraction"] == pytest.approx(1.0)
    assert all(i["step_cost"] == pytest.approx(1.0) for i in infos)
    cfg = RewardConfig()
    assert last["reward_budget"] == pytest.approx(-cfg.budget_penalty * 0.6)
    assert total == pytest.approx(-cfg.cost_weight * 1.0 - cfg.budget_penalty * 0.6)


def test_step_heavy_episode_is_cheaper_and_measurably_worse(make_env):
    env = make_env()
    step = env.actions.index(env.actions[1])
    assert str(env.actions[step]) == "STEP"
    _, infos = run(env, [0] + [step] * (STEPS - 2) + [0], options={"budget": 0.5})
    last = infos[-1]
    assert last["computed_fraction"] == pytest.approx(2 / STEPS)
    assert 0 < last["quality_loss"] < 1 and np.isfinite(last["psnr"])
    assert last["reward_budget"] == 0.0 and last["budget_excess"] == 0.0


def test_budget_penalty_scales_with_the_excess(make_env):
    env = make_env(reward=RewardConfig(budget_penalty=2.0))
    _, infos = run(env, [0, 0, 0, 1, 1, 1], options={"budget": 0.25})
    assert infos[-1]["budget_excess"] == pytest.approx(0.25)
    assert infos[-1]["reward_budget"] == pytest.approx(-0.5)


@pytest.mark.slow
def test_cfg_and_block_actions_cost_what_they_run(make_env):
    env = make_env()
    names = [str(a) for a in env.actions]
    plain = ["STEP", "CFG", "BLOCK_2", "BLOCK_4"]
    assert names == ["FULL", *plain, *(f"{a}_F{o}" for o in (1, 2) for a in plain)]
    _, infos = run(env, [0, 2, 3, 4, 1, 0], options={"budget": 0.5})
    assert [round(i["step_cost"], 4) for i in infos] == [1.0, 0.5, round(2 / 6, 4), round(4 / 6, 4), 0.0, 1.0]
    _, infos = run(env, [0, 0, 7, 0, 6, 9], options={"budget": 0.5})  # forecasts cost what their reuse costs
    assert [i["action"] for i in infos] == ["FULL", "FULL", "BLOCK_2_F1", "FULL", "CFG_F1", "STEP_F2"]
    assert [round(i["step_cost"], 4) for i in infos] == [1.0, 1.0, round(2 / 6, 4), 1.0, 0.5, 0.0]
    assert not any(i["invalid_action"] for i in infos)


def test_masks_allow_only_full_before_anything_is_cached(make_env):
    env = make_env()
    env.reset(seed=0)
    assert env.action_masks().tolist() == [True] + [False] * (len(env.actions) - 1)
    _, _, _, _, info = env.step(1)  # STEP with nothing cached: computes FULL instead and says so
    assert info["invalid_action"] and info["action"] == "FULL" and info["step_cost"] == 1.0
    plain = [not a.forecast for a in env.actions]
    assert env.action_masks().tolist() == plain  # one FULL kept: every plain reuse, no forecast yet
    env.step(0)
    assert env.action_masks().tolist() == [a.forecast <= 1 for a in env.actions]  # two: order 1 too


def test_reset_options_and_seed_determinism(make_env):
    env = make_env(budget=(0.2, 0.6))
    _, a = env.reset(seed=3)
    _, b = env.reset(seed=3)
    assert a == b and 0.2 <= a["budget"] <= 0.6
    _, c = env.reset(options={"pair": 1, "budget": 0.35})
    assert c["pair"] == 1 and c["budget"] == 0.35 and c["seed"] == 1
    with pytest.raises(ValueError, match="pair must be >= 0 and <= 2, got 99"):
        env.reset(options={"pair": 99})


def test_observation_names_and_budget_features(make_env):
    env = make_env()
    obs, _ = env.reset(options={"budget": 0.5})
    spec = env.observation_spec
    assert obs.shape == (spec.size,) and spec.names[-2:] == ("budget", "budget_left")
    assert obs[spec.names.index("budget")] == pytest.approx(0.0)  # 0.5 is the centre
    assert obs[spec.names.index("sigma")] == pytest.approx(1.0, abs=1e-4)  # step 0: sigma 1
    assert obs[spec.names.index("sigma_since_full")] == pytest.approx(-1.0)  # missing: nothing computed yet


def test_trajectory_shaping_reports_distance(make_env):
    env = make_env(reward=RewardConfig(shaping_weight=1.0))
    _, infos = run(env, [0, 1, 1, 0, 0, 0], options={"budget": 0.9})
    assert infos[0]["trajectory_distance"] == pytest.approx(0.0, abs=1e-6)
    assert infos[2]["trajectory_distance"] > 0 and infos[2]["reward_shaping"] < 0


@pytest.mark.slow
def test_batched_env_equals_single_envs(make_env):
    n = 3
    venv = make_env(BatchedCacheEnv, n)
    venv.seed(7)
    first = venv.reset()
    rng = np.random.default_rng(0)
    picks, obs, rewards = [], [first], []
    for _ in range(STEPS):
        masks = np.stack(venv.env_method("action_masks"))
        pick = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        o, r, done, infos = venv.step(pick)
        picks.append(pick)
        rewards.append(r)
        obs.append(np.stack([i["terminal_observation"] for i in infos]) if done.all() else o)
    assert done.all()
    venv.close()  # it auto-reset into new episodes; one pipeline serves one environment at a time
    for i in range(n):
        env = make_env()
        o, _ = env.reset(seed=7 + i)
        np.testing.assert_allclose(o, obs[0][i], atol=1e-5)
        for t in range(STEPS):
            o, r, *_ = env.step(picks[t][i])
            np.testing.assert_allclose(o, obs[t + 1][i], atol=1e-5)
            assert r == pytest.approx(rewards[t][i], abs=1e-5)


def test_paused_episode_leaves_the_caller_alone(make_env, toy_pipe, monkeypatch):
    env = make_env()
    env.reset(seed=0)  # the pipeline is paused inside its torch.no_grad()
    assert torch.is_grad_enabled()
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()  # e.g. an SB3 update between two steps
    assert layer.weight.grad is not None
    env.step(0)
    assert torch.is_grad_enabled()
    env.close()  # mid-episode: the hooks come off, so another environment can use the pipeline
    other = make_env()
    other.reset(seed=1)
    monkeypatch.setattr(type(toy_pipe.scheduler), "step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # a failure inside the pipeline reaches the caller
        other.step(0)
    monkeypatch.undo()
    run(make_env(), [0] * STEPS)  # ... and leaves the pipeline unhooked


def test_bad_arguments_are_clear(make_env, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown quality metric"):
        make_env(quality="mse")
    with pytest.raises(ValueError, match="budget must be > 0 and <= 1, got 1.5"):
        make_env(budget=(0.6, 1.5))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    with pytest.raises(LPIPSUnavailable, match="alexnet"):
        make_env(quality="lpips")


def test_settings_are_drawn_per_batch_and_reported(toy_pipe, tmp_path):
    """Over several settings, each batch runs at one of them (every environment of it), and episodes say which."""
    spec = RunSpec(pairs=2, steps=STEPS, budgets=(0.3, 0.6), references=tmp_path / "refs", pipe=toy_pipe,
                   settings=((STEPS, 5.0), (STEPS + 2, 5.0), (STEPS, 3.0)))
    env = BatchedCacheEnv(spec, EpisodeConfig(), num_envs=2)
    env.seed(0)
    seen = set()
    try:
        for _ in range(8):
            env.reset()
            settings = {(i["steps"], i["guidance"]) for i in env.reset_infos}
            assert len(settings) == 1
            seen |= settings
            obs, _, dones, infos = env.step(np.zeros(2, dtype=int))  # FULL at step 0
            assert obs.shape == (2, env.observation_spec.size) and not dones.any()
        assert seen == {(STEPS, 5.0), (STEPS + 2, 5.0), (STEPS, 3.0)}
    finally:
        env.close()
    single = CacheEnv(spec, EpisodeConfig())
    try:
        _, info = single.reset(seed=1, options={"steps": STEPS + 2, "guidance": 5.0})
        assert (info["steps"], info["guidance"]) == (STEPS + 2, 5.0)
        steps = 1
        while not single.step(0)[2]:
            steps += 1
        assert steps == STEPS + 2  # the episode ran the setting it was given
    finally:
        single.close()


def test_a_batch_of_two_settings_is_refused(toy_pipe, tmp_path):
    from cachepilot.envs import Episode

    spec = RunSpec(pairs=2, steps=STEPS, references=tmp_path / "refs", pipe=toy_pipe, settings=((STEPS, 5.0), (8, 5.0)))
    env = BatchedCacheEnv(spec, EpisodeConfig(), num_envs=2)
    with pytest.raises(ValueError, match="share a setting"):
        env.episodes.begin([Episode(0, "a red circle", 0, 0.5), Episode(1, "a red circle", 1, 0.5, 8, 5.0)])
    env.close()
