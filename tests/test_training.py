"""The oracle, the learned policy, policy files, and tiny end-to-end runs of distillation and PPO on toy-wan."""

import itertools
import json
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cachepilot.policies.learned import LearnedPolicy, PolicyNet, budget_mask
from cachepilot.policies.policy_file import PolicyFileError, load_policy
from cachepilot import apply_cache, cache_summary, remove_cache
from cachepilot.runtime import FULL, STEP, step_actions
from cachepilot.evaluation.oracle import (ReachedSegments, SegmentTable, fulls_for_budget, measure_reached,
                                          measure_segments, reference_latents)

STEPS = 6


def random_table(n=7, max_gap=3, seed=0, forecast=True):
    rng = np.random.default_rng(seed)
    errors = np.full((n, n + 1), np.inf)
    forecasts = np.full((n, max_gap, n + 1), np.inf)
    for i in range(n):
        for j in range(i + 1, min(i + max_gap, n) + 1):
            errors[i, j] = 0.0 if j == i + 1 else rng.uniform(0, 1) * (j - i)
            for g in range(min(i, max_gap)):
                forecasts[i, g, j] = 0.0 if j == i + 1 else rng.uniform(0, 1) * (j - i)
    return SegmentTable(errors, max_gap, rng.uniform(0.5, 2.0, n + 1), forecasts if forecast else None)


def brute_force(table, fulls):
    """The least surrogate error over every FULL set and every choice of reuse (STEP or STEP_F1) per gap."""
    n, best = table.steps, (np.inf, None)
    for k in range(1, fulls + 1):
        for rest in itertools.combinations(range(1, n), k - 1):
            plan = [0, *rest]
            gaps = [(i, j) for i, j in zip(plan, [*plan[1:], n]) if j > i + 1]
            if any(j - i > table.max_gap for i, j in gaps):
                continue
            for reuses in itertools.product([STEP, STEP.forecasting(1)], repeat=len(gaps)):
                schedule = [FULL] * n
                for (i, j), reuse in zip(gaps, reuses):
                    schedule[i + 1 : j] = [reuse] * (j - i - 1)
                best = min(best, (table.surrogate_error(schedule), schedule), key=lambda b: b[0])
    return best


def cached_latents(pipe, prompt: str, schedule) -> list:
    """The latents after each step of a one-sample generation (seed 0) under a fixed step-level schedule."""
    from cachepilot.policies.schedule import FixedSchedule

    kept = []
    apply_cache(pipe, FixedSchedule(schedule), num_inference_steps=len(schedule))
    try:
        pipe(prompt=prompt, num_inference_steps=len(schedule), generator=torch.Generator().manual_seed(0),
             callback_on_step_end=lambda p, i, t, kw: kept.append(kw["latents"].clone()) or kw)
    finally:
        remove_cache(pipe)
    return kept


@pytest.mark.parametrize("fulls", [3, 4, 5])
@pytest.mark.parametrize("forecast", [False, True])
def test_oracle_dp_finds_the_least_error_schedule(fulls, forecast):
    table = random_table(forecast=forecast)
    schedule = table.schedule(fulls)
    assert schedule.count(FULL) <= fulls and schedule[0] == FULL
    assert table.surrogate_error(schedule) == pytest.approx(brute_force(table, fulls)[0])


def test_oracle_forecasts_where_its_edges_are_cheaper_and_only_after_two_fulls():
    table = random_table(n=8, max_gap=4, seed=1)
    cheap = SegmentTable(table.errors, 4, table.gain, table.forecast / 10)
    schedule = cheap.schedule(3)
    first_gap = schedule[1 : schedule.index(FULL, 1)]
    assert set(first_gap) <= {STEP}  # one FULL kept: nothing to extrapolate from
    assert STEP.forecasting(1) in schedule
    assert STEP.forecasting(1) not in random_table(n=8, max_gap=4, seed=1, forecast=False).schedule(3)


def test_oracle_relabelling_rule_replays_its_own_schedule():
    table = random_table(seed=3)
    schedule = table.schedule(4)
    chosen, last, previous = [FULL], 0, None
    for step in range(1, table.steps):
        chosen.append(table.act(step, last, previous, 4 - chosen.count(FULL)))
        if chosen[-1] == FULL:
            last, previous = step, last
    assert table.surrogate_error(chosen) == pytest.approx(table.surrogate_error(schedule))


def test_oracle_budget_is_whole_steps():
    assert fulls_for_budget(0.35, 50) == 17 and fulls_for_budget(0.5, 50) == 25 and fulls_for_budget(0.01, 50) == 1


def test_segment_measurement_on_toy_wan(toy_pipe):
    from cachepilot.models.stepping import generate_batch
    from cachepilot.policies.schedule import FixedSchedule, full_steps_schedule

    pairs = [("a red circle moving left quickly on a plain background", 0), ("a blue square standing still on a gradient background", 1)]
    tables, frames = measure_segments(toy_pipe, pairs, STEPS, 5.0, max_gap=3)
    # the oracle's reference pass is the uncached pipeline, bit for bit
    assert np.array_equal(frames, generate_batch(toy_pipe, [p for p, _ in pairs], [0, 1], STEPS, 5.0))
    errors = tables[0].errors
    assert np.all(np.diag(errors[:, 1:]) == 0) and np.isfinite(errors[0, 3]) and np.isinf(errors[0, 4])
    # a segment error is what really happens: FULL at 0, STEP at 1, 2 -> latents entering step 3
    apply_cache(toy_pipe, FixedSchedule(full_steps_schedule(STEPS, [0, 3, 4, 5])), num_inference_steps=STEPS)
    try:
        kept = []
        toy_pipe(prompt=pairs[0][0], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                 callback_on_step_end=lambda p, i, t, kw: kept.append(kw["latents"].clone()) or kw)
    finally:
        remove_cache(toy_pipe)
    ref = []
    toy_pipe(prompt=pairs[0][0], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
             callback_on_step_end=lambda p, i, t, kw: ref.append(kw["latents"].clone()) or kw)
    rms = float((kept[2] - ref[2]).pow(2).mean().sqrt())
    assert errors[0, 3] == pytest.approx(rms, rel=1e-4) and rms > 0


def test_forecast_segments_are_what_really_happens_and_graft_the_full_before(toy_pipe):
    pairs = [("a red circle moving left quickly on a plain background", 0)]
    tables, _ = measure_segments(toy_pipe, pairs, STEPS, 5.0, max_gap=3, forecast=True)
    forecast = tables[0].forecast
    assert forecast.shape == (STEPS, 3, STEPS + 1) and np.isinf(forecast[0]).all()  # no FULL before step 0
    assert np.isinf(forecast[1, 1:]).all() and np.isfinite(forecast[2, 1, 5])  # h = 0 is the only one before 1

    f1 = STEP.forecasting(1)
    ref = cached_latents(toy_pipe, pairs[0][0], [FULL] * STEPS)
    cached = cached_latents(toy_pipe, pairs[0][0], [FULL, FULL, FULL, f1, f1, FULL])  # FULLs at h = 1, i = 2
    rms = float((cached[4] - ref[4]).pow(2).mean().sqrt())  # entering step 5
    assert forecast[2, 0, 5] == pytest.approx(rms, rel=1e-4) and rms > 0
    # the FULL before the latest is grafted: h = 0 extrapolates along another line than h = 1
    assert forecast[2, 1, 5] != pytest.approx(forecast[2, 0, 5], rel=1e-3)
    assert forecast[2, 0, 3] == 0.0 and tables[0].errors[2, 5] != pytest.approx(rms, rel=1e-3)


def test_relabelling_from_a_reached_state_follows_its_measured_segment():
    table = random_table(seed=4)
    g = table.max_gap
    # the same row as the table's: the same answers from every state
    for step, last, previous, left in [(2, 1, 0, 2), (3, 1, None, 2), (4, 3, 1, 1), (5, 3, 1, 0)]:
        row = table.cost[last, table._gap(last, previous)]
        same = ReachedSegments(np.broadcast_to(row, table.errors.shape).copy(),
                               np.broadcast_to(table.reuse[last, table._gap(last, previous)], table.errors.shape).copy())
        assert table.act(step, last, previous, left, same) == table.act(step, last, previous, left)
    # the student drifted: reusing past step 3 from its state costs far more than the table says, so compute now
    drifted = table.cost[1, g].copy()
    drifted[4:] = 1e6
    reached = ReachedSegments(np.broadcast_to(drifted, table.errors.shape).copy(),
                              np.full(table.errors.shape, STEP, dtype=object))
    assert table.act(3, 1, None, 2) != FULL and table.act(3, 1, None, 2, reached) == FULL


def test_reached_segments_are_measured_from_the_students_own_state(toy_pipe):
    pairs = [("a red circle moving left quickly on a plain background", 0),
             ("a blue square standing still on a gradient background", 1)]
    gain = np.linspace(2.0, 1.0, STEPS + 1)
    tables, _ = measure_segments(toy_pipe, pairs, STEPS, 5.0, max_gap=3, gain=gain, forecast=True)
    reference = reference_latents(toy_pipe, pairs, STEPS, 5.0)
    # a student that computed every step stood on the reference trajectory: its segments are the table's
    every = measure_reached(toy_pipe, pairs, [[FULL] * STEPS] * 2, reference, gain, STEPS, 5.0, max_gap=3)
    for table, reached in zip(tables, every):
        forecast = np.concatenate([np.full((1, STEPS + 1), np.inf), table.forecast_cost[1:, 0]])
        assert np.allclose(reached.cost, np.minimum(table.step_cost, forecast), rtol=1e-4, equal_nan=True)
    # a student that skipped steps 1-2: after its FULL at 3, reuse adds what it really adds from there
    student = [FULL, STEP, STEP, FULL, FULL, FULL]
    (reached, _) = measure_reached(toy_pipe, pairs, [student] * 2, reference, gain, STEPS, 5.0, max_gap=3)
    assert np.isinf(reached.cost[[1, 2]]).all() and np.isfinite(reached.cost[3, 5])

    def rms_entering(schedule, step):
        kept = cached_latents(toy_pipe, pairs[0][0], schedule)
        return float((kept[step - 1] - reference[0, step]).pow(2).mean().sqrt())

    carried = rms_entering(student, 4)
    reused = min(rms_entering([FULL, STEP, STEP, FULL, reuse, FULL], 5) for reuse in (STEP, STEP.forecasting(1)))
    expected = (gain[5] * reused - gain[4] * carried) ** 2
    assert carried > 0 and reached.cost[3, 5] == pytest.approx(expected, abs=1e-3 * (gain[5] * reused) ** 2)


def test_rollout_scores_real_generations_of_per_sample_schedules(toy_pipe):
    from cachepilot.models.stepping import generate_batch
    from cachepilot.evaluation.oracle import rollout
    from cachepilot.policies.schedule import full_steps_schedule

    pairs = [("a red circle moving left quickly on a plain background", 0), ("a blue square standing still on a plain background", 1)]
    reference = generate_batch(toy_pipe, [p for p, _ in pairs], [s for _, s in pairs], STEPS, 5.0)
    full, sparse = full_steps_schedule(STEPS, range(STEPS)), full_steps_schedule(STEPS, [0, 3])
    results = rollout(toy_pipe, pairs, [full, sparse], reference, STEPS, 5.0)
    assert results[0].psnr == float("inf") and results[0].computed_fraction == 1.0
    assert np.isfinite(results[1].psnr) and results[1].computed_fraction == pytest.approx(2 / STEPS)
    alone = rollout(toy_pipe, pairs[1:], [sparse], reference[1:], STEPS, 5.0)[0]
    assert alone.psnr == pytest.approx(results[1].psnr, abs=1e-3)  # per-sample schedules in one batch


def test_teacher_follows_a_searched_schedule_within_what_is_valid():
    from cachepilot.train.rollouts import OracleTeacher

    actions = step_actions(4, (1,), (1,))
    f1 = STEP.forecasting(1)
    schedule = [FULL, STEP, FULL, f1, FULL, f1]
    spent = [0.0, 1.0, 1.0, 2.0, 2.0, 3.0]  # the schedule's own spending before each step, in full steps
    teacher = OracleTeacher({}, actions, STEPS, 4, {0.5: schedule})
    every = np.ones(len(actions), dtype=bool)
    assert [actions[teacher.act(0, t, 0, None, spent[t], 0.5, valid=every)] for t in range(STEPS)] == schedule
    no_forecast = every & np.array([not a.forecast for a in actions])  # one FULL so far: nothing to extrapolate
    assert actions[teacher.act(0, 3, 2, None, 2.0, 0.5, valid=no_forecast)] == STEP
    no_full = every & np.array([a != FULL for a in actions])  # the budget allows no more FULL: the next reuse
    assert actions[teacher.act(0, 4, 2, 0, 2.0, 0.5, valid=no_full)] == f1
    # off the schedule's spending: a FULL missed at step 2 is taken at step 3; one taken early is not taken again
    assert actions[teacher.act(0, 3, 0, None, 1.0, 0.5, valid=every)] == FULL
    assert actions[teacher.act(0, 4, 3, 0, 3.0, 0.5, valid=every)] == f1
    # another budget is the table's
    table = random_table(n=STEPS, seed=1)
    teacher = OracleTeacher({0: table}, actions, STEPS, 4, {0.5: schedule})
    assert actions[teacher.act(0, 2, 1, 0, 2.0, 0.34)] == table.act(2, 1, 0, math.floor(0.34 * STEPS - 2.0 + 1e-9))


def test_budget_mask():
    actions = step_actions(6, (2, 4))  # FULL, STEP, CFG, BLOCK_2, BLOCK_4
    assert budget_mask(actions, 6, 0, 0.0, 0.1, 10).all()  # step 0 always computes
    assert list(budget_mask(actions, 6, 5, 1.0, 0.2, 10)) == [True, True, True, True, True]
    assert list(budget_mask(actions, 6, 5, 1.5, 0.2, 10)) == [False, True, True, True, False]
    assert list(budget_mask(actions, 6, 5, 2.0, 0.2, 10)) == [False, True, False, False, False]


def test_learned_policy_stays_within_budget(toy_pipe):
    torch.manual_seed(0)
    actions = step_actions(6, (2, 4))
    from cachepilot.policies.observation import ObservationSpec

    net = PolicyNet(ObservationSpec().size, len(actions))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([10.0, 0, 0, 0, 0]))  # always wants FULL
    apply_cache(toy_pipe, LearnedPolicy(net, ObservationSpec(), actions, 6, budget=0.5), num_inference_steps=10)
    try:
        toy_pipe(prompt=["a red circle moving left quickly on a plain background"] * 2, num_inference_steps=10,
                 generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
        summary = cache_summary(toy_pipe)
    finally:
        remove_cache(toy_pipe)
    assert summary.computed_fraction == pytest.approx(0.5)
    assert net.num_parameters <= 10_000


# ---- tiny end-to-end runs (shared by the tests below) -----------------------------------------------
@pytest.fixture(scope="module")
def trained(toy_pipe, tmp_path_factory):
    from cachepilot.envs import RunSpec
    from cachepilot.train.distill import DistillConfig, Distiller
    from cachepilot.train.rl import PPOConfig, PPOTrainer

    root = tmp_path_factory.mktemp("policies")
    spec = RunSpec(pairs=2, val_pairs=1, steps=STEPS, budgets=(0.3, 0.5), references=root / "refs", pipe=toy_pipe,
                   settings=((STEPS, 5.0), (STEPS + 2, 5.0)))
    config = DistillConfig(dagger_rounds=1, epochs=3, gain_pairs=1, gain_every=3, max_gap=3, num_envs=2,
                           eval_budgets=(0.5,), student_val_every=2, relabel="reached", searched_budgets=(0.5,),
                           search_rounds=1, search_proposals=2, pairs_per_setting=1)
    distiller = Distiller(spec, config, root / "distill.run", log=lambda *a: None)
    learned = distiller.learn()
    distilled = distiller.save(root / "distill")
    assert distilled.card.actions == learned.card.actions and distilled.card.results == learned.card.results
    ppo_config = PPOConfig(total_timesteps=2 * STEPS, num_envs=2, batch_size=STEPS, eval_every=1, eval_budgets=(0.5,),
                           init_from=str(root / "distill"))
    trainer = PPOTrainer(spec, ppo_config, root / "ppo.run", log=lambda *a: None)
    trainer.learn()
    ppo = trainer.save(root / "ppo")
    return root, distilled, ppo, distiller.table


@pytest.mark.slow
def test_distillation_end_to_end(trained):
    root, bundle, _, table = trained
    card = bundle.card
    assert card.training["algorithm"] == "distill" and len(card.training["rounds"]) == 2
    # the DAgger round relabelled every state it visited from the states its student reached
    relabelled = card.training["rounds"][1]["relabelled_from_reached"]
    primary = relabelled[f"{STEPS} steps, guidance 5"]
    assert primary["labels"] == 2 * 2 * STEPS and 0 <= primary["labels_changed"] <= primary["labels"]
    assert list(relabelled) == [f"{STEPS} steps, guidance 5"]  # the other setting is taught by schedules, not the DP
    # trained over both step counts: the card's range says so, and the other setting taught its own pair
    assert card.steps_range == (STEPS, STEPS + 2) and card.guidance_range == (5.0, 5.0) and card.steps == STEPS
    settings = card.training["settings"]
    assert settings[f"{STEPS} steps, guidance 5"] == {"pairs": [0, 1]}
    other = settings[f"{STEPS + 2} steps, guidance 5"]
    assert other["pairs"] == [0] and set(other["schedules"]) == {"0.3", "0.5"}  # a schedule chosen per budget there
    assert (root / "distill.run" / f"setting-{STEPS + 2}-5" / "searched_schedules.json").is_file()
    assert card.results["learned"]["0.5"]["computed_fraction"] <= 0.5 + 1e-9
    # budget 0.5 was taught by a schedule searched on the train pairs, no worse on them than any schedule it started from
    searched = card.training["searched_schedules"]["0.5"]
    assert searched["train_psnr"] >= max(v for v in searched["start_psnr"].values() if v is not None) - 0.01
    assert sum(a == "FULL" for a in searched["schedule"]) <= 0.5 * STEPS
    assert (root / "distill.run" / "tensorboard").is_dir() and list((root / "distill.run" / "checkpoints").rglob("last.ckpt"))
    assert "| 0.50 |" in table
    # The kept student is the round with the best validation score, and the card says which and what it scored.
    rounds = card.training["rounds"]
    best = max(rounds, key=lambda r: np.mean([s["psnr"] for s in r["val"].values()]))
    assert card.training["selected_round"] == best["round"]
    assert card.results["learned"]["0.5"]["psnr"] == best["val"]["0.5"]["psnr"]


def test_dagger_stops_after_its_patience_without_a_better_student():
    from cachepilot.train.distill import DistillConfig, dagger_stops

    two, three = DistillConfig(dagger_rounds=2), DistillConfig(dagger_rounds=3, dagger_patience=2)
    assert dagger_stops(1, 0, two) and not dagger_stops(1, 1, two)  # round 1 no better than round 0: round 2 skipped
    assert not dagger_stops(2, 0, two)  # nothing left to skip
    assert not dagger_stops(1, 0, three) and dagger_stops(2, 0, three) and not dagger_stops(2, 1, three)
    assert not any(dagger_stops(r, 0, DistillConfig(dagger_rounds=3, dagger_patience=0)) for r in range(4))


@pytest.mark.slow
def test_distillation_logs_the_students_val_quality_per_epoch(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = trained[0]
    events = EventAccumulator(str(root / "distill.run" / "tensorboard" / "version_0")).Reload()
    psnr = events.Scalars("student_val/psnr@0.5")
    # 3 epochs per round, every 2nd epoch and the last one, x axis counting epochs across the 2 rounds
    # (one budget here: the middle one is the only one)
    assert [e.step for e in psnr] == [2, 3, 5, 6]
    assert all(0 < e.value < 100 for e in psnr)  # a real score, not a placeholder
    assert {e.step for e in events.Scalars("student_val/computed_fraction@0.5")} == {2, 3, 5, 6}
    assert "val/accuracy" in events.Tags()["scalars"]


@pytest.mark.slow
def test_a_rerun_reuses_the_searched_schedule_and_other_settings_start_new_rounds(trained, toy_pipe, monkeypatch):
    from dataclasses import replace

    from cachepilot.envs import RunSpec
    from cachepilot.train import distill as distill_module

    root, bundle = trained[0], trained[1]
    run_dir = root / "distill.run"
    config = distill_module.DistillConfig(**bundle.card.training["config"])
    recorded = bundle.card.training["spec"]
    spec = RunSpec(pairs=recorded["pairs"], val_pairs=recorded["val_pairs"], steps=STEPS, budgets=recorded["budgets"],
                   references=root / "refs", pipe=toy_pipe, settings=[tuple(s) for s in recorded["settings"]])

    def distiller(config):
        return distill_module.Distiller(spec, config, run_dir, log=lambda *a: None)

    monkeypatch.setattr(distill_module, "search_shared", lambda *a, **k: pytest.fail("searched again"))
    found = distiller(config).searched_schedules({})
    assert [str(a) for a in found[0.5].schedule] == bundle.card.training["searched_schedules"]["0.5"]["schedule"]
    # a damaged file is set aside and searched again
    (run_dir / distill_module.SEARCHED_FILE).write_text('{"inputs": {}, "budgets": [1, 2')
    searched = []
    monkeypatch.setattr(distill_module, "search_shared", lambda *a, **k: searched.append(a[1]) or found[0.5])
    tables = {i: SimpleNamespace(schedule=lambda fulls: [FULL] * STEPS) for i in range(spec.pairs)}
    again = distiller(config).searched_schedules(tables)
    assert searched == [0.5] and again[0.5] == found[0.5]
    assert (run_dir / (distill_module.SEARCHED_FILE + ".damaged")).is_file()
    # round files are named by the settings they were made with
    first = distiller(config)
    key = first.rounds_key(first.oracles[0])
    assert sorted(p.name for p in run_dir.glob("round*.npz")) == [f"round0-{key}.npz", f"round1-{key}.npz"]
    for other, same in ((replace(config, searched_budgets=()), False), (replace(config, trainer={"devices": 2}), True)):
        d = distiller(other)
        assert (d.rounds_key(d.oracles[0]) == key) is same


@pytest.mark.slow
def test_ppo_end_to_end_warm_started(trained):
    root, distilled, ppo, _ = trained
    assert ppo.card.training["algorithm"] == "ppo" and ppo.card.training["timesteps"] >= 2 * STEPS
    assert (root / "ppo.run" / "ppo_resume.json").exists()
    assert ppo.card.actions == distilled.card.actions and ppo.net.hidden == distilled.net.hidden
    assert ppo.card.training["init_weights_sha256"] == distilled.weights_sha256  # which weights it started from
    assert ppo.card.steps_range == (STEPS, STEPS + 2)  # its episodes drew both settings


@pytest.mark.slow
def test_policy_file_round_trip_gives_identical_decisions(trained, toy_pipe, tmp_path):
    from cachepilot.policies.policy_file import save_policy

    _, bundle, _, _ = trained
    save_policy(tmp_path / "copy", bundle.net, bundle.card)
    copy = load_policy(tmp_path / "copy")
    decisions = []
    for b in (bundle, copy):
        apply_cache(toy_pipe, b.policy(0.4), num_inference_steps=STEPS)
        try:
            toy_pipe(prompt="a green circle moving up quickly on a plain background", num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(3))
            decisions.append([(d.step, d.branch, d.action) for d in cache_summary(toy_pipe).decisions])
        finally:
            remove_cache(toy_pipe)
    assert decisions[0] == decisions[1]
    copy.check_pipeline(toy_pipe, steps=STEPS)


@pytest.mark.slow
def test_policy_file_validation(trained, toy_pipe, tmp_path):
    import shutil

    from tests.tiny_models import tiny_wan

    root, bundle, _, _ = trained
    with pytest.raises(PolicyFileError, match="no policy"):
        load_policy(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(root / "distill", bad)
    data = bytearray((bad / "policy.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(PolicyFileError, match="checksum"):
        load_policy(bad)
    (bad / "policy.json").write_text("{not json")
    with pytest.raises(PolicyFileError, match="not a valid policy card"):
        load_policy(bad)
    with pytest.raises(PolicyFileError, match="trained for 'toy-wan'"):
        bundle.check_pipeline(tiny_wan().model)
    with pytest.raises(PolicyFileError, match="outside this policy's trained range"):
        bundle.policy(0.9)
    card = json.loads((root / "distill" / "policy.json").read_text())
    assert card["schema"] == 1 and card["observation"]["features"][0]["name"] == "sigma"


def test_cli_train_rejects_models_without_training_support(capsys):
    from cachepilot.cli import main

    assert main(["train", "--model", "hunyuanvideo"]) == 2
    assert "pass --prompts-file" in capsys.readouterr().err


@pytest.mark.slow
def test_distill_trainer_runs_ddp_on_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from cachepilot.train.distill import DistillConfig, fit

        rng = np.random.default_rng(0)
        arrays = {{"obs": rng.normal(size=(256, 13)).astype(np.float32), "masks": np.ones((256, 5), bool),
                   "labels": rng.integers(0, 2, 256)}}
        config = DistillConfig(epochs=2, batch_size=32,
                               trainer={{"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_nodes": 1}})
        net = fit(arrays, Path({str(tmp_path)!r}), config, 0)
        print("WORLD-OK", sum(p.numel() for p in net.parameters()))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WORLD-OK" in result.stdout
    assert "distributed_backend=gloo" in result.stderr + result.stdout


@pytest.mark.slow
def test_plugin_applies_a_policy_file_with_a_budget(trained, toy_pipe):
    from cachepilot import apply_cache as plugin_apply
    from cachepilot import cache_summary as plugin_summary
    from cachepilot import load_policy as plugin_load
    from cachepilot import remove_cache as plugin_remove
    from cachepilot.errors import CachepilotError

    root = trained[0]
    bundle = plugin_load(root / "distill")
    with pytest.raises(CachepilotError, match="needs a budget"):
        plugin_apply(toy_pipe, bundle)
    plugin_apply(toy_pipe, bundle, budget=0.3, num_inference_steps=STEPS)
    try:
        toy_pipe(prompt="a green circle moving up quickly on a plain background", num_inference_steps=STEPS,
                 generator=torch.Generator().manual_seed(3))
        assert plugin_summary(toy_pipe).computed_fraction <= 0.3 + 1e-9
    finally:
        plugin_remove(toy_pipe)


def test_shipped_profiles_match_the_shipped_weights(toy_pipe):
    """Profiles measured for the shipped toy-wan are tied to its model hash: retraining it means remeasuring them."""
    from cachepilot.envs.references import model_hash
    from cachepilot.evaluation.oracle import GAIN_FILE, stored_gain
    from cachepilot.models.registry import weights_path

    assert stored_gain(weights_path("toy-wan") / GAIN_FILE, model_hash(toy_pipe), 50, 5.0) is not None


def test_a_trainer_saves_only_what_it_learned_and_its_spec_shares_one_pipeline(toy_pipe, tmp_path):
    from cachepilot.envs import RunSpec
    from cachepilot.errors import InvalidInputError
    from cachepilot.train.distill import Distiller
    from cachepilot.train.rl import PPOTrainer

    spec = RunSpec(pairs=2, val_pairs=1, steps=STEPS, budgets=(0.3, 0.5), references=tmp_path / "refs", pipe=toy_pipe)
    for trainer in (Distiller(spec, run_dir=tmp_path / "d.run"), PPOTrainer(spec, run_dir=tmp_path / "p.run")):
        with pytest.raises(InvalidInputError, match="nothing to save yet: call learn\\(\\) first"):
            trainer.save(tmp_path / "policy")
    assert not (tmp_path / "policy").exists() and not (tmp_path / "d.run").exists()
    val = spec.validation()
    assert val.pipeline() is toy_pipe and val.pair_list() == [(RunSpec(prompts="val").pair_list()[0][0], 0)]
    assert spec.budget_range == (0.3, 0.5) and spec.model.name == "toy-wan"
