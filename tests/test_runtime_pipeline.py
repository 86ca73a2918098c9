"""The runtime inside real pipelines: toy-wan end to end, step counting without a step index, summaries."""

import json

import torch
from tiny_models import TINY

from cachepilot.policies.base import NoCache
from cachepilot.policies.schedule import FixedSchedule
from cachepilot import apply_cache, cache_summary, remove_cache, reset_cache
from cachepilot.runtime import FULL, STEP

PROMPT = "a yellow circle moving right slowly on a plain background"


def _latents(pipe, steps=6, seed=0):
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="latent").frames


def test_toy_wan_full_policy_is_bit_identical_and_remove_restores(toy_pipe):
    bare = _latents(toy_pipe)
    apply_cache(toy_pipe, NoCache())
    try:
        cached = _latents(toy_pipe)
        summary = cache_summary(toy_pipe)
    finally:
        remove_cache(toy_pipe)
    assert torch.equal(bare, cached)
    assert torch.equal(bare, _latents(toy_pipe))
    assert summary.actions() == {"cond": ["FULL"] * 6, "uncond": ["FULL"] * 6}
    assert len(summary.wall_times) == 12 and summary.wall_time > 0


def test_toy_wan_schedule_saves_compute_and_summary_round_trips(toy_pipe, tmp_path):
    schedule = FixedSchedule(["FULL", "FULL", "STEP", "CFG", "BLOCK_3", "FULL"])
    apply_cache(toy_pipe, schedule)
    try:
        first = _latents(toy_pipe)
        again = _latents(toy_pipe)  # a second generation starts from clean caches
        summary = cache_summary(toy_pipe)
    finally:
        remove_cache(toy_pipe)
    assert torch.equal(first, again)
    assert summary.actions() == {"cond": ["FULL", "FULL", "STEP", "FULL", "BLOCK_3", "FULL"],
                                 "uncond": ["FULL", "FULL", "STEP", "CFG", "BLOCK_3", "FULL"]}
    assert abs(summary.computed_fraction - (4 + 3 + 2 * 0.5) / 12) < 1e-9
    summary.to_json(tmp_path / "summary.json")
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["computed_fraction"] == summary.computed_fraction and data["calls"] == 12
    assert data["actions"]["uncond"][3] == "CFG"
    assert "cond:" in str(summary)


def test_steps_are_counted_where_the_pipeline_passes_no_step_index():
    tiny = TINY["wan"]()
    x, enc = tiny.make_inputs(1, 0)["hidden_states"], tiny.make_inputs(1, 1)["encoder_hidden_states"]
    apply_cache(tiny.model, FixedSchedule([FULL, STEP, STEP]))
    with torch.no_grad():
        for _generation in range(2):
            for step in range(3):
                for branch in ("cond", "uncond"):
                    with tiny.model.cache_context(branch):  # no step_index
                        tiny.model(x, torch.tensor([900.0 - 300 * step]), enc, return_dict=False)
            assert cache_summary(tiny.model).actions() == {"cond": ["FULL", "STEP", "STEP"], "uncond": ["FULL", "STEP", "STEP"]}
            reset_cache(tiny.model)
        for step in range(2):  # no cache context at all: one branch, counted calls
            tiny.model(x, torch.tensor([900.0]), enc, return_dict=False)
    assert cache_summary(tiny.model).actions() == {"cond": ["FULL", "STEP"]}
