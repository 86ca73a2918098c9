"""The searched oracle: its moves stay valid and within the budget, it reads back what the runtime did, and it
never ends below a schedule it started from."""

from __future__ import annotations

import numpy as np
import pytest

from cachepilot.models.stepping import generate
from cachepilot.evaluation.search import (Moves, SearchConfig, SearchResult, realised, replay, schedule_cost, search,
                                          valid)
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
    return prompts, seeds, generate(toy_pipe, prompts, seeds, STEPS, 5.0)


def test_search_never_ends_below_a_start_and_its_schedules_replay_to_its_scores(toy_pipe, pairs):
    prompts, seeds, reference = pairs
    budget = 0.35
    uniform = FixedSchedule.uniform(STEPS, 4 / STEPS).actions
    late = full_steps_schedule(STEPS, [0, 1, 2, 3])  # a poor start: every FULL at the beginning
    over = [FULL] * STEPS  # over the budget: never chosen
    starts = {"uniform": [list(uniform)] * 2, "late": [late] * 2, "over": [over] * 2}
    result = search(toy_pipe, prompts, seeds, reference, budget, starts, STEPS, 5.0, BLOCKS,
                    SearchConfig(rounds=3, proposals=3), log=lambda *_: None)
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
