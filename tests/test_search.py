"""The searched oracle: its moves stay valid and within the budget, it reads back what the runtime did, and it
never ends below a schedule it started from."""

from __future__ import annotations

import numpy as np
import pytest

from cachepilot.models.stepping import generate_batch
from cachepilot.envs import RunSpec
from cachepilot.evaluation.search import (Moves, SearchConfig, SearchResult, SharedSearchResult, forecast_reuses,
                                          realised, replay, schedule_cost, search, search_shared, valid)
from cachepilot.policies.schedule import FixedSchedule, full_steps_schedule
from cachepilot.runtime import CFG, FULL, STEP, Action
from cachepilot.runtime.ledger import CacheSummary, Decision

STEPS, BLOCKS = 12, 6


def test_moves_keep_schedules_valid_within_the_budget_and_step_0_computing():
    rng = np.random.default_rng(0)
    moves = Moves(0.35, BLOCKS, SearchConfig().reuses(BLOCKS), rng)
    schedule = full_steps_schedule(STEPS, [0, 3, 7, 10])
    seen_kinds = set()
    for _ in range(500):
        candidate = moves.propose(schedule)
        assert candidate is not None and candidate != schedule
        assert valid(candidate) and candidate[0] is FULL
        assert schedule_cost(candidate, BLOCKS) <= 0.35 + 1e-9
        seen_kinds |= {str(a) for a in candidate}
        schedule = candidate
    assert {"CFG", "STEP_F1", "STEP_F2", "BLOCK_2"} <= seen_kinds  # the whole action set is reached


def test_validity_asks_for_the_history_a_forecast_extrapolates_from():
    assert valid([FULL, STEP, FULL, STEP.forecasting(1)])
    assert not valid([FULL, STEP.forecasting(1)])  # one FULL value: no line through it
    assert not valid([FULL, FULL, CFG.forecasting(2)])
    assert not valid([STEP, FULL])
    assert schedule_cost([FULL, CFG, Action.block(3), STEP], BLOCKS) == pytest.approx((1 + 0.5 + 0.5) / 4)


def test_realised_reads_step_level_schedules_from_the_decisions():
    summary = CacheSummary("p", BLOCKS)
    for step, (cond, uncond) in enumerate([("FULL", "FULL"), ("FULL", "CFG"), ("STEP_F1", "STEP_F1")]):
        for branch, action in (("cond", cond), ("uncond", uncond)):
            summary.decisions.append(Decision(step, branch, 0, action, 0, 0.0, 1.0))
    assert realised(summary, 1, 3) == [[FULL, CFG, STEP.forecasting(1)]]
    summary.decisions.append(Decision(2, "uncond", 0, "STEP", 0, 0.0, 1.0))
    with pytest.raises(ValueError, match="not a step-level schedule"):
        realised(summary, 1, 3)


@pytest.fixture(scope="module")
def pairs(toy_pipe):
    prompts = ["a red circle moving left quickly", "a blue square moving up slowly"]
    seeds = [0, 1]
    return prompts, seeds, generate_batch(toy_pipe, prompts, seeds, STEPS, 5.0)


def test_search_never_ends_below_a_start_and_its_schedules_replay_to_its_scores(toy_pipe, pairs):
    prompts, seeds, reference = pairs
    budget = 0.35
    uniform = FixedSchedule.uniform(STEPS, 4 / STEPS).actions
    late = full_steps_schedule(STEPS, [0, 1, 2, 3])  # a poor start: every FULL at the beginning
    over = [FULL] * STEPS  # over the budget: never chosen
    starts = {"uniform": [list(uniform)] * 2, "late": [late] * 2, "over": [over] * 2}
    spec = RunSpec(prompts=tuple(prompts), pairs=2, steps=STEPS, pipe=toy_pipe)
    result = search(spec, budget, SearchConfig(rounds=3, proposals=3), starts, reference, log=lambda *_: None)
    assert result.start_psnr["over"] == [None, None]
    for i in range(2):
        best_start = max(v[i] for v in result.start_psnr.values() if v[i] is not None)
        assert result.psnr[i] >= best_start
        assert schedule_cost(result.schedules[i], BLOCKS) <= budget + 1e-9
    assert len(result.history) == 3 and result.history == sorted(result.history)  # accepted only when it improves
    replayed, taken, fractions, _ = replay(toy_pipe, result.schedules, prompts, seeds, reference, STEPS, 5.0)
    assert taken == result.schedules
    np.testing.assert_allclose(replayed, result.psnr, atol=1e-3)  # batch composition changes CPU rounding only
    assert max(fractions) <= budget + 1e-9
    assert SearchResult.from_dict(result.as_dict()) == result


def test_forecast_reuses_forecasts_only_once_the_values_it_extrapolates_from_exist():
    schedule = full_steps_schedule(STEPS, [0, 4, 8])
    f1 = forecast_reuses(schedule, 1)
    assert f1[1:4] == [STEP] * 3 and f1[5:8] == [STEP.forecasting(1)] * 3 and f1[9:] == [STEP.forecasting(1)] * 3
    assert [a for a in f1 if a == FULL] == [a for a in schedule if a == FULL] and valid(f1)
    f2 = forecast_reuses(schedule, 2)
    assert f2[5:8] == [STEP] * 3 and f2[9:] == [STEP.forecasting(2)] * 3 and valid(f2)


def test_shared_search_keeps_one_schedule_no_worse_than_its_best_start(toy_pipe, pairs):
    prompts, seeds, reference = pairs
    budget = 0.35
    uniform = list(FixedSchedule.uniform(STEPS, 4 / STEPS).actions)
    starts = {"uniform": uniform, "late": full_steps_schedule(STEPS, [0, 1, 2, 3]), "over": [FULL] * STEPS}
    spec = RunSpec(prompts=tuple(prompts), pairs=2, steps=STEPS, pipe=toy_pipe)
    result = search_shared(spec, budget, SearchConfig(rounds=3, proposals=3), starts, reference, log=lambda *_: None)
    assert result.start_psnr["over"] is None
    assert np.mean(result.psnr) >= max(v for v in result.start_psnr.values() if v is not None)
    assert schedule_cost(result.schedule, BLOCKS) <= budget + 1e-9 and valid(result.schedule)
    assert result.history == sorted(result.history)  # a candidate is kept only when it raises the mean
    replayed, *_ = replay(toy_pipe, [result.schedule] * 2, prompts, seeds, reference, STEPS, 5.0)
    np.testing.assert_allclose(replayed, result.psnr, atol=1e-3)  # one schedule, every pair's score as stated
    assert SharedSearchResult.from_dict(result.as_dict()) == result
