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


# The source of each `__call__` a stepper mirrors, in the diffusers version pyproject.toml allows. A diffusers whose
# loop differs changes its digest: check the stepper against the new loop (the test above), then update the digest.
MIRRORED_CALLS = {"WanPipeline": "8e8f5557ef9294e0", "HunyuanVideoPipeline": "eb448431e314aaf8",
                  "CogVideoXPipeline": "50a9845727a612c2", "LTXPipeline": "4b41a87f61d74b1e"}


def test_steppers_mirror_the_loops_of_the_diffusers_the_package_allows():
    import hashlib
    import inspect
    import tomllib
    from pathlib import Path

    import diffusers
    from packaging.requirements import Requirement
    from packaging.version import Version

    from cachepilot.models.stepping import STEPPERS

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    allowed = next(Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("diffusers"))
    assert any(s.operator in ("<", "<=", "~=", "==") for s in allowed.specifier), "diffusers needs an upper bound"
    assert Version(diffusers.__version__) in allowed.specifier
    assert set(MIRRORED_CALLS) == set(STEPPERS) - {"ToyWanPipeline"}
    changed = [name for name, digest in MIRRORED_CALLS.items()
               if hashlib.sha256(inspect.getsource(getattr(diffusers, name).__call__).encode()).hexdigest()[:16] != digest]
    assert not changed, f"diffusers {diffusers.__version__} changed the loop of {', '.join(changed)}"
