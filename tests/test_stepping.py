"""The stepper of every family steps exactly as the pipeline's own `__call__` does, and forks independently."""

import numpy as np
import pytest
import torch

from cachepilot.models.stepping import stepper_for
from tiny_pipelines import CALL_OPTIONS, TINY_PIPELINES

PROMPTS = ["a red square moves left", "a blue circle moves up"]
NEGATIVE = {"hunyuanvideo": {"negative_prompt": "black background", "true_cfg_scale": 3.0}}


def _generators():
    return [torch.Generator().manual_seed(s) for s in (0, 1)]


@pytest.fixture(scope="module", params=sorted(TINY_PIPELINES))
def tiny(request):
    pipe = TINY_PIPELINES[request.param]()
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


@pytest.mark.parametrize("cfg", [True, False])
def test_stepping_to_the_end_equals_call(tiny, cfg):
    kind, pipe = tiny
    options = {**CALL_OPTIONS[kind], **(NEGATIVE.get(kind, {}) if cfg else {})}
    guidance = 5.0 if cfg else 1.0
    expected = np.asarray(pipe(PROMPTS, num_inference_steps=4, guidance_scale=guidance, generator=_generators(),
                               output_type="np", **options).frames)
    negative = options.pop("negative_prompt", None)
    got = stepper_for(pipe).run(PROMPTS, _generators(), 4, guidance, negative_prompt=negative, **options)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_a_fork_continues_independently(tiny):
    kind, pipe = tiny
    stepper = stepper_for(pipe)
    state = stepper.prepare(PROMPTS, _generators(), 4, 5.0, **CALL_OPTIONS[kind])
    stepper.step(state)
    stepper.step(state)
    fork = stepper.fork(state)
    stepper.step(fork)
    stepper.step(fork)
    for _ in range(2):
        stepper.step(state)
    assert torch.equal(state.latents, fork.latents)
    assert np.array_equal(stepper.decode(state), stepper.decode(fork))


def test_toy_wan_steps_as_its_call(toy_pipe):
    prompts = ["a red square moving left", "a blue circle moving up"]
    expected = np.asarray(toy_pipe(prompts, num_inference_steps=5, guidance_scale=5.0, generator=_generators()).frames)
    got = stepper_for(toy_pipe).run(prompts, _generators(), 5, 5.0)
    assert np.array_equal(got, expected)


def test_an_unknown_pipeline_or_option_is_refused(tiny):
    kind, pipe = tiny
    with pytest.raises(Exception, match="cannot step"):
        stepper_for(object())
    with pytest.raises(Exception, match="no option"):
        stepper_for(pipe).prepare(PROMPTS, _generators(), 4, 5.0, frames_per_second=3)
