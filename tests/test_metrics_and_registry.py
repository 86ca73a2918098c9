import numpy as np
import pytest

from cachepilot.errors import CachepilotError
from cachepilot.metrics import psnr, ssim
from cachepilot.policies.registry import BASELINES, make_baseline


def test_psnr_known_values():
    ref = np.zeros((2, 8, 8, 3))
    assert psnr(ref, ref) == float("inf")
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0)


def test_ssim_is_one_for_identical_and_drops_with_noise():
    rng = np.random.default_rng(0)
    ref = rng.random((4, 16, 16, 3))
    assert ssim(ref, ref) == pytest.approx(1.0)
    noisy = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1)
    assert 0 < ssim(noisy, ref) < 0.99
    assert ssim(noisy, ref) > ssim(np.clip(ref + rng.normal(0, 0.3, ref.shape), 0, 1), ref)


def test_every_baseline_builds_at_each_setting_of_its_sweep_and_obeys_the_runtime():
    """Each registry entry builds a Policy whose knobs are the values asked for (the defaults where none is), its
    sweep starts at its defaults, and at the first call of a generation, where only FULL is valid, it computes."""
    from cachepilot.runtime import FULL, Policy, Signals

    calibration = {"teacache": {"coefficients": [0, 0, 0, 1, 0]}, "magcache": {"mag_ratios": {"cond": [1.0] * 10}}}
    first_call = Signals(0, 10, "cond", 0)
    for name, b in BASELINES.items():
        assert b.settings(**b.sweep[0]) == b.defaults, name
        for setting in b.sweep:
            policy = make_baseline(name, calibration=calibration, num_blocks=6, **setting)
            assert isinstance(policy, Policy), name
            for knob, value in b.settings(**setting).items():
                holder = policy.config if hasattr(policy.config, knob) else policy
                assert getattr(holder, knob) == value, (name, setting, knob)
            policy.reset()
            assert policy.decide_batch([first_call], [(FULL,)]) == [FULL], (name, setting)


def test_unknown_method_and_missing_calibration_are_clear_errors():
    with pytest.raises(CachepilotError, match="unknown cache method 'fastcache'"):
        make_baseline("fastcache")
    with pytest.raises(CachepilotError, match="cachepilot calibrate"):
        make_baseline("magcache")


def test_lpips_without_backbone_weights_fails_clearly(monkeypatch, tmp_path):
    from cachepilot import metrics

    monkeypatch.setattr(metrics, "_LPIPS_MODELS", {})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(metrics.LPIPSUnavailable, match="alexnet-owt-7be5be79.pth"):
        metrics.lpips_distance(np.zeros((2, 16, 16, 3)), np.zeros((2, 16, 16, 3)))


def test_lpips_plumbing_with_a_random_backbone():
    """pnet_rand=True: only the plumbing is tested here (shapes, identical -> 0); the value is no LPIPS score."""
    from cachepilot.metrics import lpips_distance

    rng = np.random.default_rng(0)
    ref = rng.random((3, 16, 16, 3)).astype(np.float32)
    assert lpips_distance(ref, ref, random_backbone=True) == pytest.approx(0.0, abs=1e-6)
    assert lpips_distance(np.clip(ref + 0.3, 0, 1), ref, random_backbone=True) > 0
