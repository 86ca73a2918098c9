"""Each baseline's decisions equal a hand-computed application of its published rule on recorded signals."""

import pytest
import torch

from cachepilot.policies.adacache import AdaCache
from cachepilot.policies.dbcache import DBCache
from cachepilot.policies.first_block import FirstBlockCache
from cachepilot.policies.magcache import MagCache, MagCacheConfig, nearest_interp
from cachepilot.policies.mixcache import MixCache
from cachepilot.policies.static import StaticCache
from cachepilot.policies.teacache import TeaCache
from cachepilot.policies.uniform import UniformCache, UniformConfig
from cachepilot.runtime import FULL, STEP, Action, Signals, step_actions

ALL = step_actions(6, (1, 2))
NONE = dict(sigma=None, timestep=None, temb_rel_l1=None, temb_proj_rel_l1=None, modulated_rel_l1=None,
            indicator_rel_l1=None, probe_rel_l1=None, residual_norm_ratio=None, mag_accumulated_error=None,
            motion_energy=None, cfg_diff_drift=None, mid_block_change=None, residual_rel_l1=None, steps_since_full=0, compute_spent=0.0)


def sig(step, n, branch="cond", sample=0, **fields):
    return Signals(step=step, num_steps=n, branch=branch, sample=sample, **(NONE | fields))


def run(policy, signals, valid=ALL):
    policy.reset()
    return ["F" if (a := policy.decide(s, valid)) == FULL else ("S" if a == STEP else str(a)) for s in signals]


def test_teacache_rule_with_identity_polynomial():
    policy = TeaCache(threshold=0.3, coefficients=(0, 0, 0, 1, 0))  # poly(x) = x: acc is the plain sum
    changes = [None, 0.1, 0.15, 0.1, 0.2, 0.01]
    # step 0 forced; 0.1 -> acc .1 skip; .25 skip; .35 >= .3 compute (acc 0); .2 skip; last step forced
    assert run(policy, [sig(i, 6, indicator_rel_l1=c) for i, c in enumerate(changes)]) == ["F", "S", "S", "F", "S", "F"]


def test_teacache_keeps_one_accumulator_per_branch():
    policy = TeaCache(threshold=0.3, coefficients=(0, 0, 0, 1, 0))
    seq = []
    for i, (c, u) in enumerate([(None, None), (0.2, 0.05), (0.2, 0.05), (0.01, 0.01)]):
        seq += [sig(i, 4, "cond", indicator_rel_l1=c), sig(i, 4, "uncond", indicator_rel_l1=u)]
    # cond: F, .2 S, .4 F, last F ; uncond: F, .05 S, .10 S, last F
    assert run(policy, seq) == ["F", "F", "S", "S", "F", "S", "F", "F"]


def test_teacache_ret_steps_forces_first_five_and_reads_timestep_proj():
    policy = TeaCache(threshold=0.3, coefficients=(0, 0, 0, 1, 0), ret_steps=True)
    signals = [sig(i, 8, temb_proj_rel_l1=0.1, indicator_rel_l1=9.0) for i in range(8)]
    # forced first five; then .1, .2 skip, .3 is not < .3: compute; no forced last step
    assert run(policy, signals) == ["F"] * 5 + ["S", "S", "F"]


def test_teacache_polynomial_is_the_official_wan_fit():
    policy = TeaCache()  # Wan2.1 1.3B, ret-steps off
    x = 0.05
    expected = 2.39676752e03 * x**4 - 1.31110545e03 * x**3 + 2.01331979e02 * x**2 - 8.29855975e00 * x + 1.37887774e-01
    assert float(policy.rescale(x)) == pytest.approx(expected)


def test_magcache_rule():
    ratios = (1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.9, 0.9, 0.9)
    policy = MagCache(MagCacheConfig(mag_ratios={"cond": ratios, "uncond": ratios}, threshold=0.12, max_skip_steps=2))
    # retention: steps 0,1 computed; then see the step-by-step arithmetic in the module docstring
    assert run(policy, [sig(i, 10) for i in range(10)]) == ["F", "F", "S", "S", "F", "S", "F", "S", "F", "S"]


def test_magcache_nearest_interp_matches_diffusers():
    from diffusers.hooks.mag_cache import nearest_interp as diffusers_interp

    src = [1.0 + 0.01 * i for i in range(100)]
    for n in (1, 7, 30, 50, 100, 150):
        assert nearest_interp(src, n) == pytest.approx(diffusers_interp(torch.tensor(src), n).tolist())


def test_published_calibrations_reach_the_baselines():
    """The authors' constants: MagCache's official Wan2.1 1.3B ratios (interleaved cond, uncond per step in the
    shipped file) and TeaCache's fitted coefficients, as calibration records the baselines are built from."""
    from cachepilot.errors import CachepilotError
    from cachepilot.policies.calibration import find_calibration, published_calibration
    from cachepilot.policies.registry import make_baseline
    from cachepilot.policies.teacache import COEFFICIENTS

    wan = published_calibration("wan2.1-t2v-1.3b")
    ratios = wan["magcache"]["mag_ratios"]
    assert len(ratios["cond"]) == len(ratios["uncond"]) == 50
    assert ratios["cond"][:3] == [1.0, 1.0124, 1.00166] and ratios["uncond"][:3] == [1.0, 1.02213, 1.0041]
    assert make_baseline("magcache", calibration=wan).ratios("uncond", 50)[2] == 1.0041
    assert make_baseline("teacache", calibration=wan).config.coefficients == COEFFICIENTS["wan2.1-t2v-1.3b"]
    hunyuan = published_calibration("hunyuanvideo")
    assert tuple(hunyuan["teacache"]["coefficients"]) == COEFFICIENTS["hunyuanvideo"] and "magcache" not in hunyuan
    with pytest.raises(CachepilotError, match="MagCache needs a calibration"):
        make_baseline("magcache", calibration=hunyuan)
    assert published_calibration("toy-wan") is None

    class Unsaved:  # a pipeline built in memory: no folder, so no calibration.json beside it
        config = type("Config", (), {"_name_or_path": ""})()

    assert find_calibration(Unsaved()) is None and find_calibration(Unsaved(), "wan2.1-t2v-1.3b") == wan


def test_static():
    assert run(StaticCache(interval=3), [sig(i, 7) for i in range(7)]) == ["F", "S", "S", "F", "S", "S", "F"]


def test_first_block_cache_reuses_the_tail_below_threshold():
    changes = [None, 0.01, 0.2, 0.05, 0.06]
    assert run(FirstBlockCache(threshold=0.05), [sig(i, 5, probe_rel_l1=c) for i, c in enumerate(changes)]) == [
        "F", "BLOCK_1", "F", "BLOCK_1", "F"]


def test_dbcache_warms_up_then_reuses_after_front_blocks():
    policy = DBCache(front_blocks=2, threshold=0.1, warmup_steps=2)
    assert policy.probe_blocks == 2 and policy.block_ks == (2,)
    changes = [None, 0.01, 0.01, 0.5, 0.05]
    assert run(policy, [sig(i, 5, probe_rel_l1=c) for i, c in enumerate(changes)]) == ["F", "F", "BLOCK_2", "F", "BLOCK_2"]


def test_dbcache_with_back_blocks_emits_block_k_b():
    policy = DBCache(front_blocks=2, back_blocks=1, threshold=0.1, warmup_steps=1)
    assert policy.back_blocks == 1 and policy.block_ks == (2,)
    valid = ALL + (Action.block(2, 1),)
    decisions = [str(policy.decide(sig(i, 3, probe_rel_l1=c), valid)) for i, c in enumerate([None, 0.05, 0.5])]
    assert decisions == ["FULL", "BLOCK_2_1", "FULL"]


def test_mixcache_triggers_then_picks_the_cheapest_granularity_under_its_threshold():
    from cachepilot.policies.mixcache import MixCache

    policy = MixCache(trigger=0.1, step_threshold=0.05, cfg_threshold=0.1, block_threshold=0.08,
                      block_ks=(2,), num_blocks=4, max_reuse=2)
    cfg_valid = ALL + (Action.block(2),)
    seq = [
        sig(0, 9, "uncond", residual_rel_l1=None, steps_since_full=None),   # nothing measured: F
        sig(1, 9, "uncond", residual_rel_l1=0.2, steps_since_full=0),       # above trigger: F
        sig(2, 9, "uncond", residual_rel_l1=0.04, steps_since_full=0),      # triggered; .04 < .05: STEP
        sig(3, 9, "uncond", residual_rel_l1=0.04, steps_since_full=1, cfg_diff_drift=0.04),  # .08 step no; cfg .08 < .1
        sig(4, 9, "uncond", residual_rel_l1=0.04, steps_since_full=2),      # max_reuse reached: F
        sig(5, 9, "uncond", residual_rel_l1=0.06, steps_since_full=0),      # step .06 no, no cfg drift, block .03: BLOCK_2
        sig(6, 9, "uncond", residual_rel_l1=0.2, steps_since_full=0),       # stays triggered; block .1 no: F
    ]
    assert run(policy, seq, cfg_valid) == ["F", "F", "S", "CFG", "F", "BLOCK_2", "F"]


def test_adacache_codebook_and_moreg():
    from cachepilot.policies.adacache import codebook_for, steps_until_compute

    assert codebook_for(30) == {0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.00: 1}
    assert codebook_for(100)[0.03] == 12 and codebook_for(30, "slow")[0.08] == 3
    assert [steps_until_compute(c, codebook_for(30)) for c in (0.01, 0.08, 0.1, 0.39, 0.9, 2.0)] == [6, 6, 5, 2, 1, 1]
    policy = AdaCache(moreg=False)
    # 30 steps; after the FULL at step 1 the distance 0.1 gives 5: steps 2..5 reuse, step 6 computes;
    # there the distance 0.3 gives 3: steps 7, 8 reuse, 9 computes
    signals = [sig(0, 30, steps_since_full=None), sig(1, 30, steps_since_full=0)]
    signals += [sig(2, 30, steps_since_full=0, mid_block_change=0.1)] + [sig(s, 30, steps_since_full=s - 2) for s in range(3, 7)]
    signals += [sig(7, 30, steps_since_full=0, mid_block_change=0.3), sig(8, 30, steps_since_full=1), sig(9, 30, steps_since_full=2)]
    assert run(policy, signals) == ["F", "F", "S", "S", "S", "S", "F", "S", "S", "F"]
    # MoReg: motion at the norm gives m = 1 (c unchanged, no gradient the first time); twice the norm: m = 256
    moreg = AdaCache(moreg=True)
    moreg.reset()
    assert moreg.distance(sig(2, 30, mid_block_change=0.1, motion_energy=0.385), ("cond", 0)) == pytest.approx(0.1)
    assert moreg.distance(sig(5, 30, mid_block_change=0.1, motion_energy=0.77), ("cond", 0)) == pytest.approx(
        0.1 * (256 + 10 * 255))


@pytest.mark.parametrize("make", [
    lambda: StaticCache(interval=2),
    lambda: TeaCache(threshold=1.5, coefficients=(0, 0, 0, 1, 0)),
    lambda: MagCache(MagCacheConfig(mag_ratios={"cond": (1.0,) + (0.98,) * 9}, threshold=0.12)),
    lambda: FirstBlockCache(threshold=0.5),
    lambda: DBCache(front_blocks=2, threshold=0.5, warmup_steps=2),
    lambda: DBCache(front_blocks=2, back_blocks=2, threshold=0.5, warmup_steps=2),
    lambda: AdaCache(threshold_scale=50.0),
    lambda: MixCache(trigger=10.0, step_threshold=10.0),
    lambda: UniformCache(fraction=0.3, order=1),
], ids=["static", "teacache", "magcache", "first-block", "dbcache", "dbcache-F2B2", "adacache", "mixcache", "uniform"])
def test_baselines_run_through_the_runtime_on_toy_wan(toy_pipe, make):
    from cachepilot import apply_cache, cache_summary, remove_cache

    apply_cache(toy_pipe, make())
    try:
        frames = toy_pipe("a red square moving up slowly on a plain background", num_inference_steps=10,
                          generator=torch.Generator().manual_seed(0)).frames
        summary = cache_summary(toy_pipe)
    finally:
        remove_cache(toy_pipe)
    assert frames.shape == (1, 8, 16, 16, 3) and torch.isfinite(torch.as_tensor(frames)).all()
    assert summary.computed_fraction < 1.0


def test_taylorseer_refreshes_on_diffusers_rule_and_forecasts_up_to_its_order():
    """FULL below the warm-up and where (step - warmup - 1) % interval == 0; in between the highest forecast order
    the kept history allows (here: one FULL kept after step 0 allows order 0, two allow order 1, ...)."""
    from cachepilot.policies.taylorseer import TaylorSeerCache

    policy = TaylorSeerCache(interval=3, warmup=2, order=2)
    history, decisions = 0, []
    for step in range(9):
        valid = (FULL, *(STEP.forecasting(o) for o in range(min(history, policy.config.order + 1))))
        action = policy.decide(sig(step, 9, steps_since_full=0), valid)
        history += action == FULL
        decisions.append(str(action))
    assert decisions == ["FULL", "FULL", "STEP_F1", "FULL", "STEP_F2", "STEP_F2", "FULL", "STEP_F2", "STEP_F2"]
    assert policy.forecast_order == 2 and policy.forecast_basis == "step"


@pytest.mark.parametrize("steps, full", [(12, {0, 6, 11}), (20, {0, 5, 10, 14, 19}), (8, {0, 7})])
def test_uniform_computes_evenly_spaced_steps_at_any_step_count_and_forecasts_up_to_its_order(steps, full):
    """round(fraction * steps) FULL steps (at least two), first and last included; every other step forecasts at
    the highest order the kept history allows, up to the config's."""
    policy = UniformCache(fraction=0.25, order=2)
    history, computed = 0, set()
    for step in range(steps):
        valid = (FULL, *(STEP.forecasting(o) for o in range(min(history, 3))))
        action = policy.decide(sig(step, steps), valid)
        if action == FULL:
            computed.add(step)
            history += 1
        else:
            assert action == STEP.forecasting(min(history - 1, 2))
    assert computed == full


def test_uniform_gives_the_frames_of_the_same_fixed_schedule(toy_pipe):
    from cachepilot import apply_cache, remove_cache
    from cachepilot.policies.schedule import FixedSchedule

    outputs = []
    for policy in (UniformConfig(fraction=0.3, order=1), FixedSchedule.uniform(10, 0.3, forecast=1)):
        apply_cache(toy_pipe, policy)
        try:
            outputs.append(toy_pipe("a red square moving up slowly on a plain background", num_inference_steps=10,
                                    generator=torch.Generator().manual_seed(0), output_type="latent").frames)
        finally:
            remove_cache(toy_pipe)
    assert torch.equal(outputs[0], outputs[1])


def test_uniform_config_refuses_a_fraction_outside_0_1_and_an_unknown_basis():
    from cachepilot.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="fraction"):
        UniformConfig(fraction=1.5)
    with pytest.raises(InvalidInputError, match="basis"):
        UniformConfig(basis="seconds")
