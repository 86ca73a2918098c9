"""The observation spec: normalisation arithmetic, the default features, save/load and validation."""

import json

import numpy as np
import pytest

from cachepilot.policies.observation import DEFAULT_FEATURES, Feature, ObservationSpec
from cachepilot.runtime import SIGNALS, Signals

def _signals(**kw):
    base = dict(step=10, num_steps=50, branch="cond", sample=0, sigma=0.8, timestep=800.0, temb_rel_l1=0.01,
                temb_proj_rel_l1=None, modulated_rel_l1=None, indicator_rel_l1=0.01, probe_rel_l1=None,
                residual_norm_ratio=0.95, residual_rel_l1=None, mag_accumulated_error=0.0, motion_energy=0.3,
                cfg_diff_drift=None, mid_block_change=None, steps_since_full=2, compute_spent=0.5)
    return Signals(**(base | kw))


def test_observation_normalisation_is_documented_arithmetic():
    spec = ObservationSpec()
    obs = dict(zip(spec.names, spec.build(_signals(), budget=0.4)))
    assert obs["step_fraction"] == pytest.approx((10 / 49 - 0.5) / 0.5)
    assert obs["temb_rel_l1"] == pytest.approx((np.log10(0.01 + 1e-4) + 2) / 2)
    assert obs["modulated_rel_l1"] == -1.0  # missing
    assert obs["residual_norm_ratio"] == pytest.approx(-0.5)
    assert obs["steps_since_full"] == pytest.approx(0.4)
    # 0.4 * 50 steps allowed, 0.5 * 10 spent, 40 steps left
    assert obs["budget_left"] == pytest.approx(((0.4 * 50 - 0.5 * 10) / 40 - 0.5) / 0.5)
    assert Feature("x", scale=0.01).normalise(1.0) == 5.0 and Feature("x").normalise(float("nan")) == 0.0


def test_observation_spec_round_trip_and_validation():
    spec = ObservationSpec()
    again = ObservationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.features == DEFAULT_FEATURES
    bad = spec.to_dict() | {"features": [{"name": "colour_of_the_sky"}]}
    with pytest.raises(ValueError, match="unknown features"):
        ObservationSpec.from_dict(bad)
    with pytest.raises(ValueError, match="version"):
        ObservationSpec.from_dict(spec.to_dict() | {"version": 2})



def test_features_take_their_normalisation_from_the_signal_declarations():
    for feature in DEFAULT_FEATURES:
        if feature.name in SIGNALS:
            s = SIGNALS[feature.name]
            assert (feature.center, feature.scale, feature.log, feature.missing) == (s.center, s.scale, s.log, s.missing)


def test_shipped_policies_observe_the_default_features():
    """A policy file carries its own spec; the shipped ones were trained on today's defaults."""
    from cachepilot.models.registry import embedded_path
    from cachepilot.policies.policy_file import load_policy

    for name in ("policy-distill", "policy-ppo"):
        assert load_policy(embedded_path("toy-wan") / name).card.observation == ObservationSpec()


def test_extra_signals_are_appended_to_the_default_observation_and_travel_with_it():
    spec = ObservationSpec.for_pipeline(None, ("forecast_rel_l1", "step_fraction", "forecast_rel_l1"))
    assert spec.features == DEFAULT_FEATURES + (Feature.of_signal("forecast_rel_l1"),)  # defaults not repeated
    assert spec.signals_read - ObservationSpec().signals_read == {"forecast_rel_l1"}  # the runtime now computes it
    assert ObservationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ObservationSpec.for_pipeline(None) == ObservationSpec()
    with pytest.raises(ValueError, match="unknown signals \\['colour_of_the_sky'\\]"):
        ObservationSpec.for_pipeline(None, ("colour_of_the_sky",))
