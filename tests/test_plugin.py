"""The plugin on diffusers' own WanPipeline (a tiny random config, built from code) and on toy-wan:
learned policy files and baselines by name apply, respect the budget, and come off without a trace."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

from cachepilot import apply_cache, cache_summary, load_policy, remove_cache
from cachepilot.errors import CachepilotError
from cachepilot.models.registry import weights_path
from cachepilot.policies.learned import PolicyNet
from cachepilot.policies.observation import ObservationSpec
from cachepilot.policies.policy_file import PolicyCard, PolicyFileError, model_config_hash, save_policy
from cachepilot.runtime import step_actions

from tiny_models import tiny_wan

STEPS = 6


@pytest.fixture(scope="module")
def wan_pipe():
    """WanPipeline with a 4-block random transformer; prompts come as embeddings (no UMT5 here), and the
    output stays latent (the VAE only lends its scale factors)."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=tiny_wan().model, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_call(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 6, 16, generator=g)
    return pipe(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], height=16, width=16, num_frames=5,
                num_inference_steps=STEPS, guidance_scale=5.0, output_type="latent",
                generator=torch.Generator().manual_seed(1)).frames


@pytest.fixture(scope="module")
def wan_policy(wan_pipe, tmp_path_factory):
    """A policy file for the tiny Wan config (random weights: the plumbing, not the quality, is tested)."""
    torch.manual_seed(0)
    actions = step_actions(4, (2,))
    spec = ObservationSpec()
    card = PolicyCard(model="tiny-wan", model_config_hash=model_config_hash(wan_pipe), actions=actions, num_blocks=4,
                      observation=spec, budget_range=(0.2, 0.6), steps=STEPS, guidance=5.0)
    path = tmp_path_factory.mktemp("policy") / "policy-tiny"
    save_policy(path, PolicyNet(spec.size, len(actions)), card)
    return path


def test_wan_pipeline_learned_policy_within_budget_and_removed_bit_identical(wan_pipe, wan_policy):
    before = _wan_call(wan_pipe)
    apply_cache(wan_pipe, load_policy(wan_policy), budget=0.5, num_inference_steps=STEPS)
    try:
        cached = _wan_call(wan_pipe)
        summary = cache_summary(wan_pipe)
    finally:
        remove_cache(wan_pipe)
    after = _wan_call(wan_pipe)
    assert torch.equal(before, after)
    assert {d.branch for d in summary.decisions} == {"cond", "uncond"}  # WanPipeline's two cache contexts
    assert summary.computed_fraction <= 0.5 + 1e-9
    assert not torch.equal(cached, before)  # it really reused something


def test_wan_pipeline_baseline_by_name(wan_pipe):
    before = _wan_call(wan_pipe)
    apply_cache(wan_pipe, "first-block", threshold=0.5, num_inference_steps=STEPS)
    try:
        _wan_call(wan_pipe)
        summary = cache_summary(wan_pipe)
    finally:
        remove_cache(wan_pipe)
    assert summary.computed_fraction < 1
    assert torch.equal(before, _wan_call(wan_pipe))


def test_policy_for_another_model_is_refused(wan_pipe, toy_pipe, wan_policy):
    with pytest.raises(PolicyFileError, match="trained for 'tiny-wan'"):
        apply_cache(toy_pipe, load_policy(wan_policy), budget=0.4)
    with pytest.raises(PolicyFileError, match="trained for 'toy-wan'"):
        apply_cache(wan_pipe, load_policy(weights_path("toy-wan") / "policy-distill"), budget=0.4)
    with pytest.raises(CachepilotError, match="needs a budget"):
        apply_cache(wan_pipe, load_policy(wan_policy))


def test_policy_with_an_action_set_for_other_blocks_is_refused(wan_pipe, wan_policy, tmp_path):
    """Same model config (hash) but a card whose action set names blocks the transformer does not have: refused when
    the card is read, and, where the card's own block count was edited to match, when it meets the transformer."""
    import json
    import shutil

    from cachepilot.integrity import seal
    from cachepilot.runtime import Action

    copy = tmp_path / "policy-edited"
    shutil.copytree(wan_policy, copy)
    card = json.loads((copy / "policy.json").read_text())
    card.pop("checksum")
    card["actions"][-1] = str(Action.block(7))
    (copy / "policy.json").write_text(json.dumps(seal(card)))
    with pytest.raises(PolicyFileError, match="BLOCK_7 do not fit a model of 4 blocks"):
        load_policy(copy)
    card["num_blocks"] = 8
    (copy / "policy.json").write_text(json.dumps(seal(card)))  # consistent with itself, wrong for the model
    with pytest.raises(PolicyFileError, match="does not fit a transformer of 4 blocks"):
        apply_cache(wan_pipe, load_policy(copy), budget=0.4)


def test_shipped_policy_on_toy_wan_removed_bit_identical(toy_pipe):
    prompt = "a red circle moving left quickly on a gradient background"

    def run():
        return toy_pipe(prompt=prompt, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).frames

    before = run()
    apply_cache(toy_pipe, load_policy(weights_path("toy-wan") / "policy-distill"), budget=0.35)
    try:
        run()
        fraction = cache_summary(toy_pipe).computed_fraction
    finally:
        remove_cache(toy_pipe)
    assert fraction <= 0.35 + 1e-9
    assert (before == run()).all()


def _configs():
    from cachepilot.policies.magcache import MagCacheConfig
    from cachepilot.policies.static import StaticConfig
    from cachepilot.policies.teacache import TeaCacheConfig

    return [(TeaCacheConfig(threshold=0.2), "teacache", {"threshold": 0.2}),
            (MagCacheConfig(threshold=0.24, max_skip_steps=3), "magcache", {"threshold": 0.24, "max_skip_steps": 3}),
            (StaticConfig(interval=3), "static", {"interval": 3})]


@pytest.mark.parametrize("config, name, knobs", _configs(), ids=lambda v: type(v).__name__)
def test_a_typed_config_caches_as_the_baseline_by_name_does(config, name, knobs, toy_pipe):
    from cachepilot.evaluation.harness import generate_logged

    taken = []
    for method, extra in ((config, {}), (name, knobs)):
        runtime = apply_cache(toy_pipe, method, **extra)  # the Policy object apply_cache builds for `method`
        remove_cache(toy_pipe)
        frames, summary = generate_logged(toy_pipe, runtime.policy, ["a red circle moving left quickly on a "
                                          "gradient background"], [0], 12, 5.0)
        taken.append((frames, [d.action for d in summary.decisions]))
    assert "STEP" in taken[0][1] and taken[0][1] == taken[1][1] and (taken[0][0] == taken[1][0]).all()


def test_a_config_refuses_knobs_and_a_foreign_object_is_named(toy_pipe):
    from cachepilot.policies.registry import policy_from_config
    from cachepilot.policies.teacache import TeaCacheConfig

    with pytest.raises(CachepilotError, match="knobs \\(threshold\\) apply to baselines by name"):
        apply_cache(toy_pipe, TeaCacheConfig(), threshold=0.3)
    with pytest.raises(CachepilotError, match="dict is not a cache config"):
        policy_from_config({"threshold": 0.1})


def test_cached_takes_the_cache_off_however_the_block_ends(toy_pipe):
    from cachepilot.policies.static import StaticCache
    from cachepilot.runtime import cached

    with pytest.raises(RuntimeError, match="boom"):
        with cached(toy_pipe, StaticCache(interval=2)) as runtime:
            assert cache_summary(toy_pipe) is runtime.summary
            raise RuntimeError("boom")
    with pytest.raises(CachepilotError, match="no cachepilot cache is applied"):
        cache_summary(toy_pipe)
