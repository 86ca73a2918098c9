"""Wan2.2's two experts: both are cached, each with its own caches and signals, nothing crosses the switch."""

import numpy as np
import pytest
import torch

from cachepilot.models.stepping import stepper_for
from cachepilot.policies.base import BasePolicy, NoCache
from cachepilot.runtime import FULL, STEP, attach_runtime, cache_summary, remove_cache
from tiny_pipelines import CALL_OPTIONS, tiny_wan

STEPS = 8
PROMPTS = ["a red square moves left", "a blue circle moves up"]


class Greedy(BasePolicy):
    """Reuses the whole step whenever it may; records what it saw."""

    name = "greedy"

    def __init__(self):
        self.seen = []

    def decide(self, signals, valid):
        self.seen.append((signals.step, signals.branch, signals.expert, valid))
        return STEP if STEP in valid else FULL


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_wan(experts=2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, policy=None):
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    if policy is not None:
        attach_runtime(pipe, policy)
    try:
        frames = stepper_for(pipe).run(PROMPTS, generators, STEPS, 5.0, **CALL_OPTIONS["wan2.2"])
        return frames, cache_summary(pipe) if policy is not None else None
    finally:
        remove_cache(pipe)


def _switch(pipe) -> int:
    state = stepper_for(pipe).prepare(PROMPTS, [torch.Generator().manual_seed(0)] * 2, STEPS, 5.0,
                                      **CALL_OPTIONS["wan2.2"])
    experts = [stepper_for(pipe).expert(state, i) for i in range(STEPS)]
    assert 0 < experts.index(1) < STEPS - 1 and experts == sorted(experts)
    return experts.index(1)


def test_full_on_both_experts_is_bit_exact(pipe):
    bare, _ = _run(pipe)
    cached, summary = _run(pipe, NoCache())
    assert np.array_equal(bare, cached)
    assert {d.expert for d in summary.decisions} == {0, 1}  # both transformers are hooked


def test_no_reuse_across_the_switch(pipe):
    switch = _switch(pipe)
    policy = Greedy()
    _, summary = _run(pipe, policy)
    for step, branch, expert, valid in policy.seen:
        assert expert == (step >= switch)
        if step in (0, switch):
            assert valid == (FULL,)  # the first step of each expert computes
    first = [d for d in summary.decisions if d.step == switch]
    assert first and all(d.action == "FULL" and d.expert == 1 for d in first)
    later = [d for d in summary.decisions if d.step == switch + 1]
    assert all(d.action == "STEP" for d in later)  # within an expert, reuse works


def test_cost_is_counted_per_expert(pipe):
    switch = _switch(pipe)
    _, summary = _run(pipe, Greedy())
    per_expert = {e: sum(d.flops for d in summary.decisions if d.expert == e) for e in (0, 1)}
    full = {e: sum(d.full_flops for d in summary.decisions if d.expert == e) for e in (0, 1)}
    assert full[0] / full[1] == pytest.approx(switch / (STEPS - switch))
    assert 0 < per_expert[0] < full[0] and 0 < per_expert[1] < full[1]


def test_calibration_fits_teacache_per_expert(pipe):
    from cachepilot.policies.teacache import TeaCache
    from cachepilot.train.calibrate import calibrate
    from cachepilot.models.stepping import set_generation_options
    set_generation_options(pipe, **CALL_OPTIONS["wan2.2"])
    try:
        record = calibrate(pipe, PROMPTS * 2, steps=STEPS, progress=False)
    finally:
        set_generation_options(pipe)
    fits = record["teacache"]["per_expert"]
    assert len(fits) == 2 and fits[0]["coefficients"] != fits[1]["coefficients"]
    policy = TeaCache.from_calibration(record)
    assert [list(r.coefficients) for r in policy.expert_rescales] == [f["coefficients"] for f in fits]
    assert len(record["magcache"]["mag_ratios"]["cond"]) == STEPS
