"""Our baselines against diffusers' own implementations on toy-wan: same skip pattern, same outputs.

Known, documented differences (knobs here avoid them): diffusers' MagCache rounds the retention step
(int(r * n + 0.5); the official code truncates) and skips on err <= threshold (official: <).
"""

import pytest
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig as DiffusersMagCacheConfig

from cachepilot.policies.first_block import FirstBlockCache
from cachepilot.policies.magcache import MagCache, MagCacheConfig
from cachepilot import apply_cache, cache_summary, remove_cache

PROMPT = "a green square moving left slowly and a red circle standing still on a gradient background"
STEPS = 10


def _run(pipe):
    return pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), output_type="latent").frames


def _computed_calls(pipe, enable):
    """Generate with a diffusers cache; return latents and, per call, whether the last block ran."""
    ran = []
    calls = []
    # a hook on a submodule: the block object itself is "called" even when a cache skips its forward
    h1 = pipe.transformer.blocks[-1].ffn.register_forward_hook(lambda *a: ran.append(True))
    h0 = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(len(ran)))
    enable()
    try:
        out = _run(pipe)
    finally:
        pipe.transformer.disable_cache()
        h0.remove()
        h1.remove()
    marks = calls + [len(ran)]
    return out, [marks[i + 1] > marks[i] for i in range(len(calls))]


def _ours(pipe, policy):
    apply_cache(pipe, policy)
    try:
        out = _run(pipe)
        summary = cache_summary(pipe)
    finally:
        remove_cache(pipe)
    return out, [d.action == "FULL" for d in summary.decisions], summary


def test_magcache_matches_diffusers(toy_pipe):
    ratios = [1.0, 1.0, 0.99, 0.97, 0.96, 0.95, 0.9, 0.93, 0.9, 0.85]
    ours, our_pattern, summary = _ours(toy_pipe, MagCache(MagCacheConfig(
        mag_ratios={"cond": tuple(ratios), "uncond": tuple(ratios)}, threshold=0.11, max_skip_steps=2, retention_ratio=0.2)))
    theirs, their_pattern = _computed_calls(toy_pipe, lambda: toy_pipe.transformer.enable_cache(DiffusersMagCacheConfig(
        threshold=0.11, max_skip_steps=2, retention_ratio=0.2, num_inference_steps=STEPS, mag_ratios=ratios)))
    assert our_pattern == their_pattern and not all(our_pattern)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    assert summary.computed_fraction < 1


def test_first_block_cache_matches_diffusers(toy_pipe):
    ours, our_pattern, summary = _ours(toy_pipe, FirstBlockCache(threshold=0.2))
    theirs, their_pattern = _computed_calls(toy_pipe, lambda: toy_pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2)))
    assert our_pattern == their_pattern and not all(our_pattern)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_peers_run_in_the_evaluation_harness_with_measured_compute(toy_pipe):
    from cachepilot.evaluation.harness import ScoredPairs, timed_reference
    from cachepilot.evaluation.peers import PEERS, run_peer

    prompts, seeds = [PROMPT, "a blue circle standing still on a plain background"], [0, 1]
    reference, _ = timed_reference(toy_pipe, prompts, seeds, 6, 5.0)
    results, wall = run_peer(toy_pipe, PEERS["diffusers-fbcache"], {"threshold": 0.5},
                             ScoredPairs(prompts, seeds, 6, 5.0, reference))
    assert wall > 0 and len(results) == 2
    # block 0 always runs: between 1/6 and 1 of the blocks; at threshold 0.5 some calls reuse
    assert 1 / 6 <= results[0].computed_fraction < 1
    # TaylorSeer, interval 2 after 3 warm-up steps: steps 0, 1, 2, 4 compute, 3 and 5 forecast
    for peer in ("diffusers-taylorseer", "diffusers-taylorseer-parts"):
        results, _ = run_peer(toy_pipe, PEERS[peer], {"cache_interval": 2}, ScoredPairs(prompts, seeds, 6, 5.0, reference))
        assert results[0].computed_fraction == pytest.approx(4 / 6) and results[0].psnr > 0, peer


def test_the_compute_meter_agrees_with_the_runtimes_accounting(toy_pipe):
    """Measured part by part from what really ran, a schedule of our runtime costs what the runtime counts."""
    from cachepilot.evaluation.peers import ComputeMeter
    from cachepilot.policies.schedule import FixedSchedule
    from cachepilot.runtime import FULL, STEP, Action

    meter = ComputeMeter(toy_pipe.transformer)
    apply_cache(toy_pipe, FixedSchedule([FULL, STEP, Action.block(2), "CFG", FULL, Action.block(4)]))
    try:
        toy_pipe([PROMPT, PROMPT], num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="latent")
        counted = cache_summary(toy_pipe).computed_fraction
    finally:
        remove_cache(toy_pipe)
        meter.remove()
    assert meter.fraction() == pytest.approx(counted, rel=1e-9) and counted < 1


def _pattern_and_output(pipe, enable, disable, watch_block: int):
    """Latents and, per transformer call, whether block `watch_block` ran."""
    ran, calls = [], []
    h1 = pipe.transformer.blocks[watch_block].ffn.register_forward_hook(lambda *a: ran.append(True))
    h0 = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(len(ran)))
    enable()
    try:
        out = pipe(PROMPT, num_inference_steps=20, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    finally:
        disable()
        h0.remove()
        h1.remove()
    marks = calls + [len(ran)]
    return out, [marks[i + 1] > marks[i] for i in range(len(calls))]


@pytest.mark.parametrize("front,back", [(3, 0), (2, 2)])
def test_dbcache_matches_cache_dit(toy_pipe, front, back):
    """cache-dit's own DBCache (F{front}B{back}) and ours: same middle-block skips, bit-identical output."""
    import cache_dit

    from cachepilot.evaluation.peers import _cache_dit_adapter
    from cachepilot.policies.dbcache import DBCache

    config = cache_dit.DBCacheConfig(Fn_compute_blocks=front, Bn_compute_blocks=back, residual_diff_threshold=0.12,
                                     max_warmup_steps=8, num_inference_steps=20)
    theirs, their_pattern = _pattern_and_output(
        toy_pipe, lambda: cache_dit.enable_cache(_cache_dit_adapter(toy_pipe), cache_config=config),
        lambda: cache_dit.disable_cache(toy_pipe), watch_block=front)
    ours, our_pattern = _pattern_and_output(
        toy_pipe, lambda: apply_cache(toy_pipe, DBCache(threshold=0.12, front_blocks=front, back_blocks=back, warmup_steps=8)),
        lambda: remove_cache(toy_pipe), watch_block=front)
    assert our_pattern == their_pattern and not all(our_pattern)
    assert torch.equal(ours, theirs)


def test_cache_dit_peer_runs_in_the_evaluation_harness(toy_pipe):
    from cachepilot.models.stepping import generate_batch
    from cachepilot.evaluation.harness import ScoredPairs
    from cachepilot.evaluation.peers import PEERS, available_peers, run_peer

    assert "cache-dit-dbcache" in available_peers()
    prompts, seeds = [PROMPT], [0]
    reference = generate_batch(toy_pipe, prompts, seeds, 12, 5.0)
    for peer in ("cache-dit-dbcache", "cache-dit-dbcache-taylorseer"):
        results, wall = run_peer(toy_pipe, PEERS[peer], {"threshold": 0.2}, ScoredPairs(prompts, seeds, 12, 5.0, reference))
        assert 0 < results[0].computed_fraction < 1 and wall > 0, peer


def test_our_taylorseer_computes_the_steps_diffusers_computes(toy_pipe):
    """The refresh rule is diffusers': the same calls compute (lite mode skips every block of the others)."""
    from diffusers import TaylorSeerCacheConfig

    from cachepilot.policies.taylorseer import TaylorSeerCache

    for interval, warmup in ((3, 3), (4, 1)):
        config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, use_lite_mode=True,
                                       taylor_factors_dtype=torch.float32)
        _, their_pattern = _pattern_and_output(toy_pipe, lambda: toy_pipe.transformer.enable_cache(config),
                                               lambda: toy_pipe.transformer.disable_cache(), watch_block=0)
        _, our_pattern = _pattern_and_output(toy_pipe, lambda: apply_cache(toy_pipe, TaylorSeerCache(
            interval=interval, warmup=warmup)), lambda: remove_cache(toy_pipe), watch_block=0)
        assert our_pattern == their_pattern and 0 < sum(our_pattern) < len(our_pattern), (interval, warmup)
